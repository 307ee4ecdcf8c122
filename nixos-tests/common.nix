# Shared pieces of the VM tests: the container image, the test tools in it,
# and the node configuration every test machine starts from.
{ pkgs, self }:

let
  inherit (pkgs) lib;

  # Sends a hand-made ICMP echo through an IP_HDRINCL raw socket.
  rawicmp = pkgs.runCommandCC "contain-test-rawicmp" { } ''
    mkdir -p $out/bin
    $CC -O2 -Wall -Wextra -Werror -o $out/bin/rawicmp ${./rawicmp.c}
  '';

  # Tools called by absolute store path inside the containers, so the
  # per-process rules can name the exact executable.
  curl = lib.getExe pkgs.curl;
  # iputils ping, run as a non-root user in the container: an ICMP datagram
  # ("ping") socket, not a raw one (Docker sets net.ipv4.ping_group_range).
  pingDgram = "${pkgs.iputils}/bin/ping";

  # A local image, no registry: busybox for the shell, wget (TCP), httpd and
  # ping (raw ICMP socket), plus the tools above with their closures.
  image = pkgs.dockerTools.buildImage {
    name = "contain-test";
    tag = "latest";
    copyToRoot = pkgs.buildEnv {
      name = "contain-test-root";
      paths = [
        pkgs.busybox
        rawicmp
        (pkgs.runCommand "contain-test-tools" { } ''
          mkdir -p $out/bin
          ln -s ${curl} $out/bin/curl
          ln -s ${pingDgram} $out/bin/ping-dgram
        '')
      ];
      pathsToLink = [ "/bin" ];
    };
    config = {
      Cmd = [ "/bin/sh" ];
      Env = [ "PATH=/bin" ];
    };
  };

  # Addresses of the test network; traffic never leaves the VM.
  net = {
    subnet = "172.28.0.0/16";
    gateway = "172.28.0.1";
    peer = "172.28.0.10";
  };

  # The node every test starts from.
  baseNode =
    { ... }:
    {
      imports = [ self.nixosModules.default ];
      virtualisation = {
        memorySize = 2048;
        diskSize = 4096;
        cores = 2;
      };
      services.contain = {
        enable = true;
        logLevel = "debug";
      };
      environment.systemPackages = [
        pkgs.bpftools
        pkgs.jq
      ];
    };

  # Python helpers prepended to every test script.
  pythonHelpers = ''
    import json
    import re


    def expect_denied(m, cmd, why):
        """The command fails, and fails the way a contain verdict does: the
        kernel refused the connect/send with EPERM. A timeout or "connection
        refused" would mean the packet left and something else stopped it."""
        status, out = m.execute(f"{cmd} 2>&1")
        assert status != 0, f"{why}: expected a denial, but it succeeded: {cmd}\n{out}"
        assert "not permitted" in out.lower(), f"{why}: failed, but not with EPERM: {cmd}\n{out}"
        return out


    def expect_allowed(m, cmd, why):
        status, out = m.execute(f"{cmd} 2>&1")
        if status != 0:
            # Give a just-reloaded policy or a just-started container a moment.
            m.wait_until_succeeds(f"{cmd} 2>&1", timeout=60)


    def eventually_denied(m, cmd, why):
        m.wait_until_fails(f"{cmd} 2>&1", timeout=60)
        return expect_denied(m, cmd, why)


    def assert_managed_parent(m, path):
        m.succeed(f"test -d {path}")
        progs = json.loads(m.succeed(f"bpftool -j cgroup show {path}"))
        types = {p.get("attach_type", "") for p in progs}
        assert any("egress" in t for t in types), f"no egress program on {path}: {progs}"
        assert any(re.search(r"connect4|inet4_connect", t) for t in types), f"no connect4 program on {path}: {progs}"
  '';
in
{
  inherit
    image
    rawicmp
    curl
    pingDgram
    net
    baseNode
    pythonHelpers
    ;
}
