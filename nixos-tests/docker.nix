# contain with real Docker containers (NixOS VM test, in the style of
# nixpkgs' nixos/tests/opensnitch.nix).
#
# One machine: Docker, services.contain, a local image (no registry), a
# user-defined network with a peer container serving HTTP on 8080 and 8081.
# Clients:
#   free     no policy selects it: everything reaches the peer (the control
#            that makes every denial below meaningful)
#   blocked  label egress=block, allowed nothing: ping (ICMP datagram socket),
#            busybox ping (raw ICMP socket), a hand-made IP_HDRINCL ICMP packet
#            and TCP are all refused with EPERM
#   peerok   label egress=peer, allowed ICMP and TCP 8080 to the peer only
#   curler   selected by name, per-process rule: only that curl executable
#            may reach the peer on 8080; busybox wget, a copy of curl, ping
#            and raw ICMP are refused
# Then: first-packet coverage of a new container, fail-closed while daemons
# are down, `policyd reload`, a refused bad policy, `systemctl reload`, and a NixOS
# configuration switch (audit mode) that reloads policyd without restarting it.
{ pkgs, self }:

let
  inherit (pkgs) lib;
  common = import ./common.nix { inherit pkgs self; };
  inherit (common) net curl;

  toPeer = extra: [
    (
      {
        to = [ "${net.peer}/32" ];
      }
      // extra
    )
  ];
  peerTcp8080 = toPeer {
    proto = "tcp";
    ports = [ 8080 ];
  };
  peerIcmp = toPeer { proto = "icmp"; };

  policy = {
    mode = "enforce";
    unknown_container = "deny";
    policy = [
      {
        name = "blocked";
        select.label.egress = "block";
        allow = [ ];
      }
      {
        name = "peer-only";
        select.label.egress = "peer";
        allow = peerTcp8080 ++ peerIcmp;
      }
      {
        name = "curler";
        select.name = "curler";
        process = [
          {
            exe = curl;
            allow = peerTcp8080;
          }
        ];
      }
    ];
  };

  toml = pkgs.formats.toml { };
  # The same policy with the "blocked" containers allowed to the peer.
  unblockedPolicy = toml.generate "contain-unblocked.toml" (
    policy
    // {
      policy = map (
        p: if p.name == "blocked" then p // { allow = peerTcp8080 ++ peerIcmp; } else p
      ) policy.policy;
    }
  );
  badPolicy = pkgs.writeText "contain-bad.toml" ''
    mode = "sometimes"
    [[policy]]
    name = "broken"
    allow = [ { to = ["not-an-address"], proto = "tcp" } ]
  '';
in
{
  name = "contain-docker";

  nodes.machine =
    { ... }:
    {
      imports = [ common.baseNode ];
      virtualisation.docker.enable = true;
      services.contain.policy = policy;
      # A plain file rather than a store symlink, so the test can edit it and
      # run `policyd reload` as an operator would.
      environment.etc."contain/policy.toml".mode = "0644";
      specialisation.audit.configuration = {
        services.contain.policy.mode = lib.mkForce "audit";
      };
    };

  testScript =
    { nodes, ... }:
    common.pythonHelpers
    + ''
      peer = "${net.peer}"
      gateway = "${net.gateway}"
      curl = "${curl}"


      def tcp(c, port=8080, host=peer):
          return f"docker exec {c} wget -q -T 5 -O- http://{host}:{port}/"


      def curl_from(c, exe=curl, port=8080):
          return f"docker exec {c} {exe} -sS -v --max-time 5 http://{peer}:{port}/"


      def ping_raw(c):
          return f"docker exec {c} ping -c 1 -W 3 {peer}"


      def ping_dgram(c):
          # non-root in the container: no CAP_NET_RAW, so an ICMP "ping" socket
          return f"docker exec --user 65534 {c} ping-dgram -c 1 -W 3 {peer}"


      def raw_icmp(c):
          return f"docker exec {c} rawicmp {peer}"


      def start(name, *args):
          machine.succeed(
              f"docker run -d --name {name} --network contain-test {' '.join(args)} "
              "contain-test:latest sleep 1000000"
          )


      def cgroup_of(c):
          pid = machine.succeed("docker inspect -f '{{.State.Pid}}' " + c).strip()
          return machine.succeed(f"cat /proc/{pid}/cgroup").strip()


      start_all()
      machine.wait_for_unit("contain-bpf-loader.service")
      machine.wait_for_unit("contain-resolver.service")
      machine.wait_for_unit("contain-policyd.service")
      machine.wait_for_unit("docker.service")

      with subtest("the programs sit on the managed parent before Docker starts containers"):
          assert_managed_parent(machine, "/sys/fs/cgroup/contain.slice")
          machine.succeed("test -S /run/contain/loader.sock")
          machine.succeed("test -S /run/contain/resolver.sock")
          machine.succeed("test -S /run/contain/policyd.sock")
          machine.succeed("systemctl show -p User --value contain-policyd | grep -qx contain")
          loader_active = int(machine.succeed(
              "systemctl show -p ActiveEnterTimestampMonotonic --value contain-bpf-loader").strip())
          docker_start = int(machine.succeed(
              "systemctl show -p ExecMainStartTimestampMonotonic --value docker").strip())
          assert loader_active <= docker_start, "docker started before the loader was ready"
          machine.succeed("docker info --format '{{.CgroupDriver}}' | grep -qx systemd")

      with subtest("a local image and a peer"):
          machine.succeed("docker load -i ${common.image}")
          machine.succeed(
              "docker network create --subnet ${net.subnet} --gateway ${net.gateway} contain-test"
          )
          machine.succeed(
              f"docker run -d --name peer --network contain-test --ip {peer} contain-test:latest "
              "sh -c 'mkdir -p /www && echo contain-ok > /www/index.html "
              "&& httpd -p 8080 -h /www && exec httpd -f -p 8081 -h /www'"
          )
          start("free")
          start("blocked", "--label", "egress=block")
          start("peerok", "--label", "egress=peer")
          start("curler")
          machine.wait_until_succeeds(tcp("free") + " | grep -q contain-ok", timeout=120)
          for c in ["peer", "free", "blocked", "peerok", "curler"]:
              cg = cgroup_of(c)
              assert "/contain.slice/docker-" in cg, f"{c} is not under contain.slice: {cg}"

      with subtest("control: a container no policy selects reaches the peer every way"):
          expect_allowed(machine, tcp("free"), "free tcp")
          expect_allowed(machine, tcp("free", port=8081), "free tcp 8081")
          expect_allowed(machine, ping_raw("free"), "free ping (raw socket)")
          expect_allowed(machine, ping_dgram("free"), "free ping (datagram socket)")
          expect_allowed(machine, raw_icmp("free"), "free IP_HDRINCL icmp")

      with subtest("egress=block: ping, TCP and raw ICMP are denied"):
          expect_denied(machine, tcp("blocked"), "blocked tcp")
          expect_denied(machine, ping_raw("blocked"), "blocked ping (raw socket)")
          expect_denied(machine, ping_dgram("blocked"), "blocked ping (datagram socket)")
          expect_denied(machine, raw_icmp("blocked"), "blocked IP_HDRINCL icmp")

      with subtest("egress=peer: what the policy allows passes, nothing else"):
          expect_allowed(machine, tcp("peerok"), "peerok tcp 8080")
          expect_allowed(machine, ping_raw("peerok"), "peerok ping (raw socket)")
          expect_allowed(machine, ping_dgram("peerok"), "peerok ping (datagram socket)")
          expect_allowed(machine, raw_icmp("peerok"), "peerok IP_HDRINCL icmp")
          expect_denied(machine, tcp("peerok", port=8081), "peerok tcp 8081")
          expect_denied(machine, tcp("peerok", host=gateway), "peerok tcp to the gateway")

      with subtest("per-process rule: only the named curl executable may connect"):
          expect_allowed(machine, curl_from("curler"), "curler curl 8080")
          expect_denied(machine, curl_from("curler", port=8081), "curler curl 8081")
          expect_denied(machine, tcp("curler"), "curler busybox wget")
          expect_denied(
              machine,
              f"docker exec curler sh -c 'mkdir -p /tmp && cp {curl} /tmp/curl && "
              f"/tmp/curl -sS -v --max-time 5 http://{peer}:8080/'",
              "a copy of curl (same comm, other executable)",
          )
          expect_denied(machine, ping_raw("curler"), "curler ping")
          expect_denied(machine, raw_icmp("curler"), "curler IP_HDRINCL icmp")

      with subtest("denied attempts are logged"):
          machine.succeed(
              "journalctl -u contain-policyd -o cat | grep '\"contain.verdict\":\"deny\"' "
              "| grep -q '\"container.name\":\"curler\"'"
          )

      with subtest("the denials moved curler's counter on the metrics page"):
          machine.succeed(
              f"{curl} -sf http://127.0.0.1:9879/metrics "
              "| grep -E '^contain_container_verdicts_total\\{action=\"deny\",policy=\"curler\",container=\"curler\"\\} [1-9]'"
          )

      with subtest("first packet: a new container's first process is already filtered"):
          expect_denied(
              machine,
              "docker run --rm --network contain-test --label egress=block contain-test:latest "
              f"wget -q -T 5 -O- http://{peer}:8080/",
              "first process of a new blocked container",
          )
          expect_denied(
              machine,
              "docker run --rm --network contain-test --label egress=block contain-test:latest "
              f"rawicmp {peer}",
              "first packet (raw) of a new blocked container",
          )

      with subtest("nothing fails open while daemons are down"):
          machine.succeed("systemctl stop contain-policyd contain-resolver")
          expect_denied(machine, tcp("blocked"), "blocked, policyd and resolver stopped")
          # Not resolved yet: the unknown_container verdict (deny) applies.
          start("late")
          expect_denied(machine, tcp("late"), "an unresolved new container")
          machine.succeed("systemctl restart contain-bpf-loader")
          machine.wait_for_unit("contain-bpf-loader.service")
          expect_denied(machine, tcp("blocked"), "blocked, after a loader restart")
          assert_managed_parent(machine, "/sys/fs/cgroup/contain.slice")
          machine.succeed("systemctl start contain-resolver contain-policyd")
          machine.wait_for_unit("contain-policyd.service")
          # Resolved now: no policy selects it, so it is free.
          expect_allowed(machine, tcp("late"), "late, once resolved")
          expect_denied(machine, tcp("blocked"), "blocked, daemons back")
          expect_allowed(machine, tcp("peerok"), "peerok, daemons back")

      with subtest("policyd reload applies an edited policy"):
          machine.succeed("cp /etc/contain/policy.toml /tmp/policy.base.toml")
          machine.succeed("policyd check ${unblockedPolicy}")
          machine.succeed("cp ${unblockedPolicy} /etc/contain/policy.toml")
          machine.succeed("policyd reload")
          expect_allowed(machine, tcp("blocked"), "blocked tcp, unblocked policy")
          expect_allowed(machine, raw_icmp("blocked"), "blocked raw icmp, unblocked policy")

      with subtest("a bad policy is refused and the running one stays in force"):
          machine.fail("policyd check ${badPolicy}")
          machine.succeed("cp ${badPolicy} /etc/contain/policy.toml")
          machine.fail("policyd reload")
          machine.succeed(tcp("blocked"))
          machine.succeed("systemctl is-active contain-policyd")

      with subtest("systemctl reload re-reads the file (policyd reload), and fails on a refused one"):
          machine.succeed("cp ${badPolicy} /etc/contain/policy.toml")
          machine.fail("systemctl reload contain-policyd")
          machine.succeed(tcp("blocked"))
          machine.succeed("cp /tmp/policy.base.toml /etc/contain/policy.toml")
          machine.succeed("systemctl reload contain-policyd")
          eventually_denied(machine, tcp("blocked"), "blocked tcp, base policy again")
          expect_denied(machine, raw_icmp("blocked"), "blocked raw icmp, base policy again")

      with subtest("a NixOS switch to audit mode reloads policyd (no restart) and denies nothing"):
          toplevel = "${nodes.machine.system.build.toplevel}"
          pid = machine.succeed("systemctl show -p MainPID --value contain-policyd").strip()
          machine.succeed(f"{toplevel}/specialisation/audit/bin/switch-to-configuration test")
          expect_allowed(machine, tcp("blocked"), "blocked tcp, audit mode")
          expect_allowed(machine, raw_icmp("blocked"), "blocked raw icmp, audit mode")
          machine.succeed(f"{toplevel}/bin/switch-to-configuration test")
          eventually_denied(machine, tcp("blocked"), "blocked tcp, enforce mode again")
          after = machine.succeed("systemctl show -p MainPID --value contain-policyd").strip()
          assert pid == after, f"policyd was restarted ({pid} -> {after}), not reloaded"
    '';
}
