//! `policyd setup docker`: puts Docker's containers under the managed parent
//! cgroup by setting `"cgroup-parent"` in Docker's `daemon.json`.
//!
//! The file belongs to the administrator (and to Docker's package), so it is
//! changed only when asked, as little as possible, and never silently:
//! [`merge_cgroup_parent`] is a pure function on the file's text that adds
//! the one key in place (every other byte stays as it was: key order,
//! indentation, other settings) or replaces its value with `force`;
//! [`setup_docker`] does the I/O around it: a backup next to the file, and an
//! atomic replace that keeps the file's mode.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Docker's key for the parent of every container's cgroup.
pub const CGROUP_PARENT_KEY: &str = "cgroup-parent";

/// Why the file was left alone.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    #[error("it is not valid JSON ({0}); fix it (Docker would refuse it too) and run this again")]
    InvalidJson(String),
    #[error("it holds JSON but not an object at the top level; Docker expects {{ \"key\": value, ... }}")]
    NotAnObject,
    #[error("it already sets \"cgroup-parent\" to {existing}; containers would not be under {wanted}. Run again with --force to replace it (the other setting is kept in the backup)")]
    Conflict { existing: String, wanted: String },
    #[error("its layout could not be edited in place without changing other settings; set \"cgroup-parent\" by hand")]
    Unlocated,
}

/// What the merge did to the text.
#[derive(Debug, PartialEq, Eq)]
pub enum Merge {
    /// The key already has the wanted value: nothing to write.
    Unchanged,
    /// The key was added, or (with force) its value replaced.
    Changed {
        text: String,
        /// The value it replaced (JSON), if any.
        replaced: Option<String>,
    },
}

/// Sets `"cgroup-parent": parent` in the JSON object `existing` (`None`: the
/// file does not exist yet). Everything else in the text is kept byte for
/// byte. A different existing value is a [`MergeError::Conflict`] unless
/// `force`.
pub fn merge_cgroup_parent(
    existing: Option<&str>,
    parent: &str,
    force: bool,
) -> Result<Merge, MergeError> {
    let wanted = serde_json::Value::String(parent.to_owned()).to_string();
    let setting = format!("\"{CGROUP_PARENT_KEY}\": {wanted}");
    let Some(text) = existing.filter(|t| !t.trim().is_empty()) else {
        return Ok(Merge::Changed {
            text: format!("{{\n  {setting}\n}}\n"),
            replaced: None,
        });
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| MergeError::InvalidJson(e.to_string()))?;
    let object = value.as_object().ok_or(MergeError::NotAnObject)?;
    let members = top_level_members(text).ok_or(MergeError::NotAnObject)?;
    // Docker (Go's encoding/json) takes the last of duplicate keys, like
    // serde_json: the member to look at and replace is the last one.
    let current = members.iter().rev().find(|m| m.key == CGROUP_PARENT_KEY);
    let old = object.get(CGROUP_PARENT_KEY);
    // The bytes to replace, and with what.
    let (range, insert) = match (old, current) {
        (Some(v), _) if v.as_str() == Some(parent) => return Ok(Merge::Unchanged),
        // serde_json saw the key where the scan did not: adding it would
        // leave the old value last, which is the one Docker reads.
        (Some(_), None) => return Err(MergeError::Unlocated),
        (Some(v), Some(_)) if !force => {
            return Err(MergeError::Conflict {
                existing: v.to_string(),
                wanted,
            })
        }
        (Some(_), Some(member)) => (member.value.clone(), wanted),
        // Insert as the first member, indented like the existing first
        // member (or by two spaces in an empty object).
        (None, _) => {
            let open = members_start(text).ok_or(MergeError::NotAnObject)?;
            match members.first() {
                Some(first) => {
                    let between = &text[open..first.key_start];
                    let insert = if between.contains('\n') {
                        format!("{between}{setting},")
                    } else {
                        // One line: `{ "cgroup-parent": ..., ` before the rest.
                        let space = if between.is_empty() { " " } else { "" };
                        format!(" {setting},{space}")
                    };
                    (open..open, insert)
                }
                None => {
                    let close = text[open..]
                        .find('}')
                        .map(|i| open + i)
                        .ok_or(MergeError::NotAnObject)?;
                    (open..close, format!("\n  {setting}\n"))
                }
            }
        }
    };
    let mut merged = text.to_owned();
    merged.replace_range(range, &insert);
    verify(object, &merged, parent)?;
    Ok(Merge::Changed {
        text: merged,
        replaced: old.map(|v| v.to_string()),
    })
}

/// The merged text must say exactly what the old one said, plus the one
/// setting: checked by parsing it again, so a slip of the in-place edit can
/// never write a file Docker reads differently.
fn verify(
    old: &serde_json::Map<String, serde_json::Value>,
    new: &str,
    parent: &str,
) -> Result<(), MergeError> {
    let mut want = old.clone();
    want.insert(CGROUP_PARENT_KEY.to_owned(), parent.into());
    match serde_json::from_str::<serde_json::Value>(new) {
        Ok(serde_json::Value::Object(got)) if got == want => Ok(()),
        _ => Err(MergeError::Unlocated),
    }
}

/// One `"key": value` of the top-level object, as byte ranges of the text.
struct Member {
    key: String,
    key_start: usize,
    value: std::ops::Range<usize>,
}

/// The byte just after the top-level object's `{`.
fn members_start(text: &str) -> Option<usize> {
    let open = text.len() - text.trim_start().len();
    (text.as_bytes().get(open) == Some(&b'{')).then_some(open + 1)
}

/// The JSON value of type `T` that starts at byte `start` of `text`, and
/// the byte just past it.
fn value_at<T: serde::de::DeserializeOwned>(text: &str, start: usize) -> Option<(T, usize)> {
    let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter();
    let value = values.next()?.ok()?;
    Some((value, start + values.byte_offset()))
}

/// The members of the top-level object of `text`, which serde_json has
/// already accepted as a JSON object, so the scan only has to find
/// boundaries: serde_json reads each key and value, and says where it ends.
fn top_level_members(text: &str) -> Option<Vec<Member>> {
    let skip_ws = |i: usize| text.len() - text[i..].trim_start().len();
    let mut members = Vec::new();
    let mut i = skip_ws(members_start(text)?);
    if text[i..].starts_with('}') {
        return Some(members);
    }
    loop {
        let key_start = i;
        let (key, key_end) = value_at(text, key_start)?;
        i = skip_ws(key_end);
        if !text[i..].starts_with(':') {
            return None;
        }
        let value_start = skip_ws(i + 1);
        let (serde::de::IgnoredAny, value_end) = value_at(text, value_start)?;
        members.push(Member {
            key,
            key_start,
            value: value_start..value_end,
        });
        i = skip_ws(value_end);
        match text.as_bytes().get(i) {
            Some(b',') => i = skip_ws(i + 1),
            Some(b'}') => return Some(members),
            _ => return None,
        }
    }
}

/// Why `setup docker` changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{path}: {source}")]
    Refused {
        path: PathBuf,
        #[source]
        source: MergeError,
    },
    #[error("{path} is a symlink to {target}, which does not exist; create that file (or remove the link) and run this again")]
    DanglingLink { path: PathBuf, target: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `setup docker` did.
#[derive(Debug, PartialEq, Eq)]
pub enum SetupOutcome {
    /// The file already said so; it was not touched.
    AlreadySet,
    /// The file was written; the old one (if there was one) is at `backup`.
    Written {
        backup: Option<PathBuf>,
        replaced: Option<String>,
    },
}

/// Sets Docker's `cgroup-parent` to `parent` in the file at `path`: the old
/// file is copied to `backup` first (when it exists), and the new one
/// replaces it atomically with the same permissions: each file is created
/// with them (a `daemon.json` of mode 0600 may hold a proxy's credentials,
/// never world-readable for a moment), and a `daemon.json` that is a
/// symlink has the file it points to replaced, not the link.
pub fn setup_docker(
    path: &Path,
    parent: &str,
    force: bool,
    backup: &Path,
) -> Result<SetupOutcome, SetupError> {
    let resolved = fs::canonicalize(path).ok();
    // Written over, a dangling link would become a file of its own and the
    // file it names stay missing.
    if let (None, Ok(target)) = (&resolved, fs::read_link(path)) {
        return Err(SetupError::DanglingLink {
            path: path.to_owned(),
            target,
        });
    }
    let path = resolved.as_deref().unwrap_or(path);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| SetupError::Io {
            action,
            path,
            source,
        }
    };
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading", path)(e)),
    };
    let merged = merge_cgroup_parent(existing.as_deref(), parent, force).map_err(|source| {
        SetupError::Refused {
            path: path.to_owned(),
            source,
        }
    })?;
    let Merge::Changed { text, replaced } = merged else {
        return Ok(SetupOutcome::AlreadySet);
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mode = fs::metadata(path).map_or(0o644, |meta| meta.permissions().mode() & 0o7777);
    // A file of `mode` from its creation on, never one found in its place.
    let create = |at: &Path, text: &str| -> std::io::Result<()> {
        match fs::remove_file(at) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(at)?;
        file.write_all(text.as_bytes())?;
        // The process's umask may have taken bits off.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()
    };
    if let Some(old) = &existing {
        create(backup, old).map_err(io("writing the backup", backup))?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.contain-tmp"));
    let written = create(&tmp, &text)
        .map_err(io("writing", &tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io("replacing", path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    Ok(SetupOutcome::Written {
        backup: existing.map(|_| backup.to_owned()),
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "contain.slice";

    fn changed(existing: Option<&str>, force: bool) -> String {
        match merge_cgroup_parent(existing, PARENT, force) {
            Ok(Merge::Changed { text, .. }) => text,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn parsed(text: &str) -> serde_json::Value {
        serde_json::from_str(text).expect("the merge writes valid JSON")
    }

    #[test]
    fn a_missing_or_empty_file_becomes_just_the_setting() {
        for existing in [None, Some(""), Some(" \n")] {
            let text = changed(existing, false);
            assert_eq!(
                parsed(&text),
                serde_json::json!({ "cgroup-parent": PARENT })
            );
            assert!(text.ends_with('\n'));
        }
    }

    #[test]
    fn the_key_is_added_and_every_other_byte_kept() {
        let existing = "{\n    \"log-driver\": \"journald\",\n    \"default-ulimits\": {\"nofile\": {\"Name\": \"nofile\", \"Hard\": 64000, \"Soft\": 64000}},\n    \"dns\": [\"10.0.0.2\", \"{not,a}\"]\n}\n";
        let text = changed(Some(existing), false);
        assert_eq!(
            text,
            format!(
                "{{\n    \"cgroup-parent\": \"contain.slice\",{}",
                &existing[1..]
            )
        );
        let mut want = parsed(existing);
        want["cgroup-parent"] = PARENT.into();
        assert_eq!(parsed(&text), want);
    }

    #[test]
    fn a_one_line_object_stays_one_line() {
        let text = changed(Some(r#"{"debug": true}"#), false);
        assert_eq!(
            text,
            r#"{ "cgroup-parent": "contain.slice", "debug": true}"#
        );
        let text = changed(Some(r#"{ "debug": true }"#), false);
        assert_eq!(
            text,
            r#"{ "cgroup-parent": "contain.slice", "debug": true }"#
        );
    }

    #[test]
    fn an_empty_object_gets_the_key() {
        let text = changed(Some("{ }\n"), false);
        assert_eq!(
            parsed(&text),
            serde_json::json!({ "cgroup-parent": PARENT })
        );
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn the_same_value_already_there_changes_nothing() {
        let existing = "{\"cgroup-parent\": \"contain.slice\", \"debug\": true}";
        assert_eq!(
            merge_cgroup_parent(Some(existing), PARENT, false),
            Ok(Merge::Unchanged)
        );
        assert_eq!(
            merge_cgroup_parent(Some(existing), PARENT, true),
            Ok(Merge::Unchanged)
        );
    }

    #[test]
    fn merging_twice_is_merging_once() {
        let once = changed(Some("{\"debug\": true}\n"), false);
        assert_eq!(
            merge_cgroup_parent(Some(&once), PARENT, false),
            Ok(Merge::Unchanged)
        );
    }

    #[test]
    fn another_parent_is_refused_without_force() {
        let existing = "{\"cgroup-parent\": \"system.slice\"}";
        assert_eq!(
            merge_cgroup_parent(Some(existing), PARENT, false),
            Err(MergeError::Conflict {
                existing: "\"system.slice\"".into(),
                wanted: "\"contain.slice\"".into(),
            })
        );
    }

    #[test]
    fn force_replaces_only_the_value() {
        let existing = "{\n  \"cgroup-parent\" : \"system.slice\" ,\n  \"debug\": true\n}\n";
        match merge_cgroup_parent(Some(existing), PARENT, true) {
            Ok(Merge::Changed { text, replaced }) => {
                assert_eq!(
                    text,
                    "{\n  \"cgroup-parent\" : \"contain.slice\" ,\n  \"debug\": true\n}\n"
                );
                assert_eq!(replaced.as_deref(), Some("\"system.slice\""));
            }
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn force_replaces_a_value_of_another_type() {
        let existing = r#"{"a": {"cgroup-parent": 1}, "cgroup-parent": ["x", {"y": "}"}], "b": 2}"#;
        let text = changed(Some(existing), true);
        assert_eq!(
            text,
            r#"{"a": {"cgroup-parent": 1}, "cgroup-parent": "contain.slice", "b": 2}"#
        );
    }

    #[test]
    fn of_duplicate_keys_the_last_is_the_one_docker_reads_and_replaced() {
        let existing = r#"{"cgroup-parent": "a.slice", "cgroup-parent": "b.slice"}"#;
        let text = changed(Some(existing), true);
        assert_eq!(
            text,
            r#"{"cgroup-parent": "a.slice", "cgroup-parent": "contain.slice"}"#
        );
        assert_eq!(parsed(&text)["cgroup-parent"], PARENT);
    }

    #[test]
    fn escaped_keys_and_strings_do_not_confuse_the_scan() {
        let existing =
            r#"{"we\"ird": "a\\\"}, \"cgroup-parent\": 1", "cgroup\u002dparent": "x.slice"}"#;
        // "cgroup\u002dparent" is "cgroup-parent" once decoded.
        assert!(matches!(
            merge_cgroup_parent(Some(existing), PARENT, false),
            Err(MergeError::Conflict { .. })
        ));
        let text = changed(Some(existing), true);
        assert_eq!(parsed(&text)["cgroup-parent"], PARENT);
        assert_eq!(parsed(&text)["we\"ird"], "a\\\"}, \"cgroup-parent\": 1");
    }

    #[test]
    fn invalid_json_and_non_objects_are_refused() {
        assert!(matches!(
            merge_cgroup_parent(Some("{\"debug\": true,}"), PARENT, true),
            Err(MergeError::InvalidJson(_))
        ));
        assert!(matches!(
            merge_cgroup_parent(Some("{\"debug\": tru"), PARENT, false),
            Err(MergeError::InvalidJson(_))
        ));
        for not_object in ["[]", "\"contain.slice\"", "42", "null"] {
            assert_eq!(
                merge_cgroup_parent(Some(not_object), PARENT, true),
                Err(MergeError::NotAnObject),
                "{not_object}"
            );
        }
    }

    #[test]
    fn setup_writes_a_backup_keeps_the_mode_and_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("contain-setup-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("daemon.json");
        let backup = dir.join("daemon.json.bak");
        let original = "{\"debug\": true}\n";
        fs::write(&path, original).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        let outcome = setup_docker(&path, PARENT, false, &backup).unwrap();
        assert_eq!(
            outcome,
            SetupOutcome::Written {
                backup: Some(backup.clone()),
                replaced: None
            }
        );
        assert_eq!(fs::read_to_string(&backup).unwrap(), original);
        assert_eq!(
            parsed(&fs::read_to_string(&path).unwrap())["cgroup-parent"],
            PARENT
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let second_backup = dir.join("second.bak");
        assert_eq!(
            setup_docker(&path, PARENT, false, &second_backup).unwrap(),
            SetupOutcome::AlreadySet
        );
        assert!(
            !second_backup.exists(),
            "nothing changed, nothing backed up"
        );

        fs::write(&path, "{oops").unwrap();
        assert!(matches!(
            setup_docker(&path, PARENT, true, &second_backup),
            Err(SetupError::Refused { .. })
        ));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{oops",
            "a refused file is left alone"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn setup_keeps_the_backup_private_and_a_symlink_a_symlink() {
        let dir = std::env::temp_dir().join(format!("contain-setup-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("managed.json");
        let link = dir.join("daemon.json");
        let backup = dir.join("daemon.json.bak");
        fs::write(
            &target,
            "{\"proxies\": {\"http-proxy\": \"http://u:secret@p\"}}\n",
        )
        .unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // A backup left world-readable by an earlier run is made again.
        fs::write(&backup, "old").unwrap();
        fs::set_permissions(&backup, fs::Permissions::from_mode(0o644)).unwrap();

        setup_docker(&link, PARENT, false, &backup).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the link is kept; the file it names is replaced"
        );
        assert_eq!(
            parsed(&fs::read_to_string(&target).unwrap())["cgroup-parent"],
            PARENT
        );
        for file in [&target, &backup] {
            assert_eq!(
                fs::metadata(file).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                file.display()
            );
        }
        assert!(fs::read_to_string(&backup).unwrap().contains("secret"));

        // A link to a file that is not there is left as it is, and said.
        fs::remove_file(&target).unwrap();
        let refused = setup_docker(&link, PARENT, false, &backup).unwrap_err();
        assert!(
            refused.to_string().contains("is a symlink to")
                && refused.to_string().contains("managed.json"),
            "{refused}"
        );
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!target.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn setup_creates_a_missing_file_without_a_backup() {
        let dir = std::env::temp_dir().join(format!("contain-setup-new-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("docker").join("daemon.json");
        let backup = dir.join("daemon.json.bak");
        assert_eq!(
            setup_docker(&path, PARENT, false, &backup).unwrap(),
            SetupOutcome::Written {
                backup: None,
                replaced: None
            }
        );
        assert!(!backup.exists());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
