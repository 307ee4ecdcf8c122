//! Tracepoint record layouts differ between kernels, so field offsets are
//! read from tracefs `format` files rather than compiled in.

/// Offset of `field` in a tracefs `format` file's text.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.split_whitespace().last()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let offset = line
            .split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))?;
        offset.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXEC: &str = "name: sched_process_exec
ID: 307
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;
";

    const FORK: &str = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;
";

    const NEWTASK: &str = "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;
\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:40;\tsize:2;\tsigned:1;
";

    #[test]
    fn reads_the_new_task_pid_and_clone_flags_not_common_pid() {
        assert_eq!(field_offset(NEWTASK, "pid"), Some(8));
        assert_eq!(field_offset(NEWTASK, "clone_flags"), Some(32));
    }

    #[test]
    fn reads_offsets() {
        assert_eq!(field_offset(EXEC, "filename"), Some(8));
        assert_eq!(field_offset(EXEC, "old_pid"), Some(16));
        assert_eq!(field_offset(FORK, "child_pid"), Some(44));
        assert_eq!(field_offset(FORK, "parent_comm"), Some(8));
        assert_eq!(field_offset(FORK, "nope"), None);
    }
}
