#!/usr/bin/env bash
# Offline checks of contain's Nix code, for machines without nixpkgs or a
# binary cache (the real `nix flake check` boots VMs and needs both).
#
#   1. every .nix file in the repository parses (nix-instantiate --parse);
#   2. the stub lib's module system behaves like nixpkgs' where the module
#      relies on it (stub/lib-tests.nix);
#   3. nixos/module.nix, evaluated with the stub lib/pkgs/NixOS base and a
#      sample configuration: the options and their types, the three units with
#      their ExecStart commands, capability sets, users, ordering, hardening,
#      the slice, /run/contain, Docker's cgroup-parent, and that bad values
#      are refused;
#   4. flake.nix's outputs, evaluated against a stub nixpkgs: packages and how
#      the eBPF object is built, modules, overlay, checks; each VM test's nodes
#      evaluated with the module, and its Python test script parsed, with
#      undefined names reported.
#
# Prints "N passed, N failed" and exits non-zero if anything failed.
# Installs Debian's nix-bin (Nix 2.8) if nix-instantiate is missing.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
stub="$here/stub"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

ensure_nix() {
    command -v nix-instantiate >/dev/null 2>&1 && return 0
    echo "nix-instantiate not found; installing Debian's nix-bin" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "not root: install nix-bin (apt-get install nix-bin) and re-run" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show nix-bin >/dev/null 2>&1; then
        apt-get update -qq >/dev/null || return 1
    fi
    apt-get install -y -qq nix-bin >/dev/null || return 1
    command -v nix-instantiate >/dev/null 2>&1
}

if ! ensure_nix; then
    echo "0 passed, 1 failed (no nix-instantiate)"
    exit 1
fi
command -v python3 >/dev/null 2>&1 || { echo "0 passed, 1 failed (no python3)"; exit 1; }
echo "using $(nix-instantiate --version)"

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

# Evaluation needs no store writes; keep Nix away from ~/.cache and the
# network all the same.
export NIX_PATH=
export XDG_CACHE_HOME="$work/cache"
nixeval() {
    nix-instantiate --eval --strict --json --option allow-import-from-derivation false "$@"
}

# ---------------------------------------------------------------- 1. parse
echo "== parse"
while IFS= read -r -d '' f; do
    rel="${f#"$repo"/}"
    if err="$(nix-instantiate --parse "$f" 2>&1 >/dev/null)"; then
        pass "parse $rel"
    else
        fail "parse $rel: $err"
    fi
done < <(find "$repo" \( -name .git -o -name target -o -name .vm-cache -o -name result \) -prune -o -name '*.nix' -type f -print0 | sort -z)

# Flakes are only parsed by Nix 2.8 here; with flake support, also check
# the flake's metadata the way `nix flake` reads it.
if nix --extra-experimental-features 'nix-command flakes' eval --help >/dev/null 2>&1; then
    if out="$(nix --extra-experimental-features 'nix-command flakes' eval --json --impure \
        --expr "let f = import $repo/flake.nix; in { inputs = builtins.attrNames f.inputs; hasOutputs = builtins.isFunction f.outputs; }" 2>&1)" \
        && [ "$out" = '{"hasOutputs":true,"inputs":["nixpkgs"]}' ]; then
        pass "flake.nix: inputs are nixpkgs only, outputs is a function (nix eval)"
    else
        fail "flake.nix metadata via nix eval: $out"
    fi
fi

# ------------------------------------------------ 2.-4. evaluate with stubs
run_eval() { # name file -> $work/name.json
    local name="$1" file="$2"
    if nixeval "$file" >"$work/$name.json" 2>"$work/$name.err"; then
        pass "evaluate $(basename "$file")"
        return 0
    fi
    fail "evaluate $(basename "$file"):"
    sed 's/^/     /' "$work/$name.err" | head -40
    return 1
}

echo "== evaluate"
run_eval libtests "$stub/lib-tests.nix"
run_eval module "$stub/eval-module.nix"
run_eval flake "$stub/eval-flake.nix"

echo "== assert"
results="$(
    WORK="$work" REPO="$repo" python3 - <<'PY'
import ast
import builtins
import json
import os
import re
import sys

work = os.environ["WORK"]
results = []


def check(ok, what):
    results.append(("ok  " if ok else "FAIL") + " " + what)


def load(name):
    path = os.path.join(work, name + ".json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        check(False, f"{name}: no evaluation result to check")
        return None


def get(d, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


# ---- 2. the stub's module system
lt = load("libtests")
if lt is not None:
    for name, ok in sorted(lt.items()):
        check(ok is True, f"stub lib: {name}")

# ---- 3. the module
m = load("module")
if m is not None:
    o = m["options"]
    check(set(o["names"]) >= {"enable", "package", "policy", "logLevel", "cgroupParent"},
          f"options: services.contain.{{enable,package,policy,logLevel,cgroupParent}} exist ({o['names']})")
    check(o["types"].get("enable") == "bool" and o["enableDefault"] is False,
          "options: enable is a bool, off by default (mkEnableOption)")
    check(o["types"].get("package") == "package" and o["packageDefaultText"] == "pkgs.contain",
          "options: package is a package option defaulting to pkgs.contain (mkPackageOption)")
    check(o["types"].get("policy") == "submodule" and o["policyDefault"] == {},
          "options: policy is a (freeform) submodule, default {}")
    check(o["modeValues"] == ["enforce", "audit"], "options: policy.mode is enum [enforce audit]")
    check(o["unknownContainerValues"] == ["deny", "allow", "audit"],
          "options: policy.unknown_container is enum [deny allow audit]")
    check(o["cgroupParentDefault"] == "contain.slice", "options: cgroupParent defaults to contain.slice")
    check(o["types"].get("logLevel") == "enum" and o["logLevelDefault"] == "info",
          "options: logLevel is an enum, default info")

    s = m["sample"]
    units = s["units"]
    check(sorted(units) == ["contain-bpf-loader", "contain-policyd", "contain-resolver"],
          f"units: exactly the three daemons ({sorted(units)})")
    L, R, P = units.get("contain-bpf-loader", {}), units.get("contain-resolver", {}), units.get("contain-policyd", {})
    Lc, Rc, Pc = L.get("serviceConfig", {}), R.get("serviceConfig", {}), P.get("serviceConfig", {})
    pkg = re.compile(r"^/nix/store/[0-9a-z]{32}-contain-0\.1\.0/bin/")

    def exec_is(c, binary, args):
        e = c.get("ExecStart", "")
        return bool(pkg.match(e)) and e.split("/bin/", 1)[1] == f"{binary} {args}"

    check(exec_is(Lc, "bpf-loader", "--socket /run/contain/loader.sock --attach-parent /sys/fs/cgroup/contain.slice --client-user contain"),
          f"loader: ExecStart = {Lc.get('ExecStart')}")
    check(exec_is(Rc, "resolver", "--socket /run/contain/resolver.sock"), f"resolver: ExecStart = {Rc.get('ExecStart')}")
    check(exec_is(Pc, "policyd", "daemon --policy /etc/contain/policy.toml --socket /run/contain/policyd.sock --metrics-listen 127.0.0.1:9879"),
          f"policyd: ExecStart = {Pc.get('ExecStart')}")

    check(sorted(Lc.get("CapabilityBoundingSet", [])) == sorted(["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_SYS_PTRACE"]),
          f"loader: CapabilityBoundingSet is exactly BPF NET_ADMIN SYS_ADMIN PERFMON SYS_PTRACE ({Lc.get('CapabilityBoundingSet')})")
    check(Lc.get("RestrictNamespaces") == "net",
          f"loader: RestrictNamespaces = net, the only namespaces it enters ({Lc.get('RestrictNamespaces')})")
    check("User" not in Lc or Lc["User"] == "root", "loader: runs as root")
    check(Lc.get("RuntimeDirectory") == "contain" and Lc.get("RuntimeDirectoryPreserve") == "yes",
          "loader: RuntimeDirectory=contain, preserved")
    check(Lc.get("ProtectSystem") == "strict" and "/sys/fs/bpf" in Lc.get("ReadWritePaths", [])
          and "-/sys/fs/cgroup/contain.slice" in Lc.get("ReadWritePaths", []),
          "loader: ProtectSystem=strict, read-write only /sys/fs/bpf and the managed cgroup")
    check(Lc.get("ProtectHome") is True and Lc.get("NoNewPrivileges") is True and Lc.get("Restart") == "always",
          "loader: ProtectHome, NoNewPrivileges, Restart=always")
    check({"docker.service", "containerd.service"} <= set(L.get("before", [])),
          "loader: ordered before docker.service and containerd.service")
    check({"docker.service", "containerd.service", "multi-user.target"} <= set(L.get("wantedBy", [])),
          "loader: pulled in by docker, containerd and multi-user.target")
    check("contain.slice" in L.get("requires", []) and "contain.slice" in L.get("after", []),
          "loader: requires and follows contain.slice")
    check(L.get("startLimitIntervalSec") == 0, "loader: never gives up restarting")
    check(Lc.get("Type") == "notify" and Lc.get("NotifyAccess") == "main",
          f"loader: started only once it says it is ready (Type={Lc.get('Type')}, NotifyAccess={Lc.get('NotifyAccess')})")

    check(sorted(Rc.get("CapabilityBoundingSet", [])) == ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"],
          f"resolver: CapabilityBoundingSet is SYS_PTRACE DAC_READ_SEARCH only ({Rc.get('CapabilityBoundingSet')})")
    check("CAP_NET_ADMIN" not in Rc.get("CapabilityBoundingSet", []), "resolver: no CAP_NET_ADMIN")
    check({"containerd.service", "docker.service"} <= set(R.get("after", [])), "resolver: after containerd and docker")
    check(Rc.get("ProtectProc") == "default" and Rc.get("ProcSubset") == "all", "resolver: sees all of /proc")

    check(Pc.get("User") == "contain" and Pc.get("Group") == "contain", "policyd: User=contain Group=contain")
    check(Pc.get("CapabilityBoundingSet") in ("", [""]) and Pc.get("AmbientCapabilities") == [],
          "policyd: no capabilities at all")
    check({"contain-bpf-loader.service", "contain-resolver.service"} <= set(P.get("after", []))
          and {"contain-bpf-loader.service", "contain-resolver.service"} <= set(P.get("wants", [])),
          "policyd: after (and wants) the loader and the resolver")
    check(exec_is({"ExecStart": Pc.get("ExecReload", "")}, "policyd", "--socket /run/contain/policyd.sock reload"),
          f"policyd: ExecReload is policyd reload, which fails on a refused policy ({Pc.get('ExecReload')})")
    check(Pc.get("PrivateNetwork") is False and Pc.get("RestrictAddressFamilies") == ["AF_UNIX", "AF_INET", "AF_INET6"]
          and Pc.get("IPAddressDeny") == "any" and Pc.get("IPAddressAllow") == ["localhost"],
          "policyd with metrics (the default): IP sockets, reachable from localhost only")
    check(o.get("metricsListenAddressDefault") == "127.0.0.1:9879" and o.get("metricsAllowedClientsDefault") == ["localhost"],
          "options: metrics on 127.0.0.1:9879 for localhost by default")
    # The .deb's units claim the module's hardening (README, debian/systemd/): every setting
    # of their [Service] sections, key by key, but the command lines (store paths), the
    # Environment (the module's logLevel) and what the module spells by its own options.
    repo = os.environ["REPO"]

    def deb_service(unit):
        section, values = None, {}
        try:
            lines = open(os.path.join(repo, "debian/systemd", unit + ".service")).read().splitlines()
        except OSError:
            return None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]" and "=" in line:
                key, value = line.split("=", 1)
                values.setdefault(key, []).append(value)
        return values

    def nix_words(value):
        if isinstance(value, bool):
            return ["yes" if value else "no"]
        if isinstance(value, list):
            return [str(v) for v in value]
        return str(value).split()

    def deb_words(values):
        # Repeated keys add up, except a "~" line (SystemCallFilter), kept whole.
        return [w for v in values for w in (v.split() if not v.startswith("~") else [v])]

    not_compared = {"ExecStart", "ExecReload", "ExecStartPre", "ExecStartPost", "Environment"}
    for unit, nix in (("contain-bpf-loader", Lc), ("contain-resolver", Rc), ("contain-policyd", Pc)):
        deb = deb_service(unit)
        if deb is None:
            check(False, f"{unit}: debian/systemd/{unit}.service not readable")
            continue
        differ = []
        for key in sorted((set(deb) | set(nix)) - not_compared):
            d = deb_words(deb.get(key, []))
            n = nix_words(nix[key]) if key in nix else []
            if key == "SystemCallFilter" and isinstance(nix.get(key), list):
                n = [str(v) for v in nix[key]]
            # A boolean off is systemd's default for every setting here: the same as unset.
            if key not in deb and nix.get(key) is False:
                continue
            if sorted(d) != sorted(n):
                differ.append(f"{key}: deb {d} nix {n}")
        check(not differ, f"{unit}: the .deb's unit has the module's settings" + (" (" + "; ".join(differ) + ")" if differ else ""))

    nm = get(m, "variants", "noMetrics", default={})
    check(nm.get("PrivateNetwork") is True and nm.get("RestrictAddressFamilies") == ["AF_UNIX"]
          and "IPAddressDeny" not in nm and nm.get("ExecStart", "").endswith(" --metrics-listen off"),
          "policyd without metrics (metricsListenAddress = null): no network, Unix sockets only, --metrics-listen off")
    v6 = get(m, "variants", "ipv6Metrics", default={})
    check(v6.get("ExecStart", "").endswith(" --metrics-listen [::1]:9879")
          and v6.get("IPAddressAllow") == ["localhost", "10.0.0.0/8"],
          "policyd metrics on [::1]:9879 for the clients listed")
    src = s["etc"].get("contain/policy.toml", {}).get("source", "")
    check(src != "" and P.get("reloadTriggers") == [src],
          "policyd: reloaded (not restarted) when /etc/contain/policy.toml changes")
    for name, u in units.items():
        check(u.get("environment", {}).get("RUST_LOG") == "info", f"{name}: RUST_LOG follows logLevel")
        check(u.get("serviceConfig", {}).get("UMask") == "0007", f"{name}: UMask 0007 (sockets not world-usable)")
    for name in ("contain-bpf-loader", "contain-resolver"):
        check(units.get(name, {}).get("serviceConfig", {}).get("Group") == "contain",
              f"{name}: Group=contain, so its socket belongs to group contain")

    check(s["users"].get("contain", {}).get("isSystemUser") is True and s["users"]["contain"].get("group") == "contain",
          "users: system user contain in group contain")
    check("contain" in s["groups"], "users: group contain")
    check(s["tmpfiles"] == ["d /run/contain 1770 root contain - -"], "/run/contain: root:contain 1770 from early boot")
    check(list(s["slices"]) == ["contain"], "the managed slice contain.slice is defined")
    check(s["dockerSettings"] == {"cgroup-parent": "contain.slice"}, "docker: cgroup-parent = contain.slice")
    loader_bin = Lc["ExecStart"].split(" ")[0]
    check(s["runtimeChecks"] == {"docker": [loader_bin + " --check-attached /sys/fs/cgroup/contain.slice"]},
          f"docker starts only once the loader's programs are attached, and no containerd unit appears ({s['runtimeChecks']})")
    check("contain-0.1.0" in s["systemPackages"], "environment.systemPackages has the package")
    check(s["failedAssertions"] == [], f"no failed NixOS assertions ({s['failedAssertions']})")
    pol = s["contain"]["policy"]
    check(pol.get("mode") == "enforce" and pol.get("unknown_container") == "deny" and len(pol.get("policy", [])) == 2,
          "policy: typed defaults filled in, freeform [[policy]] entries passed through")

    v = m["variants"]
    check(v["noDocker"] == {}, "without Docker, no Docker settings")
    check(v["userDockerParent"] == "mine.slice", "a user's own cgroup-parent wins over the module's mkDefault")
    ns = v["nestedSlice"]
    check(ns["execStart"].endswith("--attach-parent /sys/fs/cgroup/contain.slice/contain-docker.slice --client-user contain")
          and ns["slices"] == ["contain-docker"] and ns["requires"] == ["contain-docker.slice"]
          and ns["dockerParent"] == "contain-docker.slice"
          and ns["dockerCheck"] == [ns["execStart"].split(" --socket")[0] + " --check-attached /sys/fs/cgroup/contain.slice/contain-docker.slice"],
          "a nested slice (contain-docker.slice) maps to its cgroup path")
    check(v["containerdChecks"] == {"containerd": [loader_bin + " --check-attached /sys/fs/cgroup/contain.slice"]},
          f"containerd alone: it starts only once the loader's programs are attached ({v['containerdChecks']})")
    check(v["auditPolicy"] == {"mode": "audit", "unknown_container": "audit"}, "policy: audit values accepted")
    check(v["uncheckedSource"] != src, "checkPolicy = false uses the rendered policy unchecked")
    check(all(x == [] or x == {} for x in v["disabled"].values()), f"disabled: the module adds nothing ({v['disabled']})")

    for name, ok in sorted(m["rejected"].items()):
        check(ok is True, f"refused: {name}")
    for name, ok in sorted(m["accepted"].items()):
        check(ok is True, f"accepted: {name}")

# ---- 4. the flake
f = load("flake")
if f is not None:
    check(f["inputs"] == ["nixpkgs"], f"flake: inputs are nixpkgs only ({f['inputs']})")
    check(f["nixpkgsUrl"].startswith("github:NixOS/nixpkgs/"), f"flake: nixpkgs = {f['nixpkgsUrl']}")
    check({"packages", "nixosModules", "checks", "overlays"} <= set(f["outputs"]), f"flake: outputs {f['outputs']}")
    p = f["packages"]
    check({"default", "contain", "contain-ebpf"} <= set(p["names"]), f"packages.x86_64-linux: {p['names']}")
    d = p["default"]
    check(d["name"] == "contain-0.1.0" and d["mainProgram"] == "policyd", "package: contain-0.1.0 (buildRustPackage)")
    check(d["cargoBuildFlags"] == ["--bin", "bpf-loader", "--bin", "resolver", "--bin", "policyd"],
          "package: builds the three binaries")
    check(d["cargoLock"].endswith("/Cargo.lock") and os.path.exists(d["cargoLock"]), "package: from the workspace Cargo.lock")
    e = p["ebpf"]
    check(d["ebpfObj"] == e["storePath"] + "/lib/contain/contain.bpf.o",
          "package: bpf-loader's build.rs gets CONTAIN_EBPF_OBJ from the eBPF derivation")
    check(e["cargoRoot"] == "crates/contain-ebpf" and len(e["lockFiles"]) == 1
          and e["lockFiles"][0].endswith("crates/contain-ebpf/Cargo.lock"),
          "ebpf: built from crates/contain-ebpf with its own Cargo.lock")
    check("rust-vendor-src" in e["cargoDeps"], "ebpf: the standard library's dependencies are vendored (build-std)")
    check(e["cargoConfigVendorDirectories"][:1] == [e["cargoDepsName"]] and e["cargoDeps"][0] == "cargo-vendor-dir",
          f"ebpf: cargoDeps is named {e['cargoDepsName']!r}, the vendor directory importCargoLock's cargo config "
          f"names ({e['cargoConfigVendorDirectories']}), and that config comes first in the join")
    check(e["env"].get("RUSTC_BOOTSTRAP") == "1", "ebpf: RUSTC_BOOTSTRAP=1 (nixpkgs' rustc, no overlay)")
    check(any(n.startswith("bpf-linker") for n in e["nativeBuildInputs"]), "ebpf: links with pkgs.bpf-linker")
    check(any("rustc" in n and "overridden" in n for n in e["nativeBuildInputs"]),
          "ebpf: rustc with rust-src in its sysroot")
    check(e["dontFixup"] is True, "ebpf: the object is not stripped (BTF stays)")
    check(f["overlay"] == "contain-0.1.0", "overlays.default provides pkgs.contain")
    check(f["nixosModules"]["types"] == {"contain": "path", "default": "lambda"},
          "nixosModules: contain = ./nixos/module.nix, default wires the flake's package")

    c = f["checks"]
    check({"package", "ebpf", "docker", "containerd"} <= set(c["names"]), f"checks.x86_64-linux: {c['names']}")

    driver_globals = {"machine", "machines", "start_all", "subtest", "driver", "log", "retry", "join_all",
                      "serial_stdout_on", "serial_stdout_off", "polling_condition", "create_machine",
                      "run_tests", "Machine", "t"}

    def undefined_names(src):
        tree = ast.parse(src)
        defined, used = set(driver_globals) | set(dir(builtins)), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                (defined if isinstance(node.ctx, (ast.Store, ast.Del)) else used).add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.arg):
                defined.add(node.arg)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.Global):
                defined.update(node.names)
        return sorted(used - defined)

    for test, node_units in (("docker", "dockerEnable"), ("containerd", "containerdEnable")):
        t = c[test]
        script = t["script"]
        try:
            missing = undefined_names(script)
            check(True, f"{test} test: the Python test script parses")
            check(missing == [], f"{test} test: no undefined names in the test script ({missing})")
        except SyntaxError as err:
            check(False, f"{test} test: Python syntax error: {err}")
        check("${" not in script and "/nix/store/" in script, f"{test} test: Nix interpolations resolved in the script")
        n = t["nodes"].get("machine", {})
        check(n.get("containEnable") is True and n.get(node_units) is True,
              f"{test} test: node runs services.contain and {node_units[:-6]}")
        check(sorted(n.get("units", [])) == ["contain-bpf-loader", "contain-policyd", "contain-resolver"],
              f"{test} test: the node has the three units")
        check(n.get("containPackage") == "contain-0.1.0", f"{test} test: node uses the flake's package (nixosModules.default)")
        check(n.get("failedAssertions") == [], f"{test} test: no failed assertions")

    dn = c["docker"]["nodes"]["machine"]
    check(dn["dockerSettings"].get("cgroup-parent") == "contain.slice", "docker test: Docker's cgroup-parent is contain.slice")
    check(dn["etcPolicyMode"] == "0644" and dn["specialisations"] == ["audit"],
          "docker test: editable policy file (for policyd reload) and an audit specialisation")
    names = [p.get("name") for p in dn["containPolicy"].get("policy", [])]
    check(names == ["blocked", "peer-only", "curler"], f"docker test: policies {names}")
    curler = dn["containPolicy"]["policy"][2]["process"][0]["exe"]
    ds = c["docker"]["script"]
    check(curler.endswith("/bin/curl") and curler in ds, "docker test: the per-process rule names the curl the script runs")
    for needle, what in [
        ("docker load -i /nix/store/", "loads the local image"),
        ("--label egress=block", "a container with label egress=block"),
        ("egress=block", "egress=block"),
        ("ping -c 1", "ping"),
        ("ping-dgram", "ping through an ICMP datagram socket"),
        ("rawicmp", "raw ICMP (IP_HDRINCL)"),
        ("wget -q", "TCP"),
        ("policyd reload", "policyd reload"),
        ("policyd check", "policyd check"),
        ("systemctl reload contain-policyd", "systemctl reload"),
        ("specialisation/audit/bin/switch-to-configuration test", "a configuration switch"),
        ("systemctl restart contain-bpf-loader", "a loader restart"),
        ("bpftool -j cgroup show", "the programs on the managed parent"),
    ]:
        check(needle in ds, f"docker test script: {what}")
    cs = c["containerd"]["script"]
    for needle, what in [
        ("ctr -n default images import /nix/store/", "imports the local image"),
        ("--runc-systemd-cgroup --cgroup contain.slice:ctr:", "containers in contain.slice"),
        ("--label egress=", "labels"),
        ("rawicmp", "raw ICMP"),
    ]:
        check(needle in cs, f"containerd test script: {what}")

for line in results:
    print(line)
PY
)"
status=$?
while IFS= read -r line; do
    case "$line" in
        "ok   "*) pass "${line#ok   }" ;;
        "FAIL "*) fail "${line#FAIL }" ;;
        "") ;;
        *) echo "$line" ;;
    esac
done <<<"$results"
if [ "$status" -ne 0 ]; then
    fail "the assertion script itself failed (exit $status)"
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
