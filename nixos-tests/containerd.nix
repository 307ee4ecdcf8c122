# contain with containerd alone (ctr, no Docker): containers started in the
# managed slice with runc's systemd cgroup driver, each in a network namespace
# joined to the host by a veth pair (as a CNI bridge would, without CNI). The
# host serves HTTP on the veth addresses; the "blocked" container (label
# egress=block) may not reach it by TCP, ping or raw ICMP, the "free" one may.
{ pkgs, self }:

let
  common = import ./common.nix { inherit pkgs self; };
  image = "docker.io/library/contain-test:latest";
in
{
  name = "contain-containerd";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ common.baseNode ];
      virtualisation.containerd.enable = true;
      networking.firewall.allowedTCPPorts = [ 8080 ];
      environment.systemPackages = [ pkgs.iproute2 ];
      services.contain.policy.policy = [
        {
          name = "blocked";
          select.label.egress = "block";
          allow = [ ];
        }
      ];
    };

  testScript = common.pythonHelpers + ''
    execs = 0


    def in_ctr(name, cmd):
        global execs
        execs += 1
        return f"ctr -n default task exec --exec-id t{execs} {name} {cmd}"


    def ctr_start(name, host_ip, ct_ip, label=None):
        machine.succeed(
            f"ip netns add {name}",
            f"ip link add {name}-h type veth peer name eth0 netns {name}",
            f"ip addr add {host_ip}/30 dev {name}-h",
            f"ip link set {name}-h up",
            f"ip -n {name} addr add {ct_ip}/30 dev eth0",
            f"ip -n {name} link set eth0 up",
            f"ip -n {name} link set lo up",
        )
        labels = f"--label egress={label}" if label else ""
        machine.succeed(
            f"ctr -n default run -d --runc-systemd-cgroup --cgroup contain.slice:ctr:{name} "
            f"--with-ns network:/var/run/netns/{name} {labels} ${image} {name} sleep 1000000"
        )
        machine.succeed(f"test -d /sys/fs/cgroup/contain.slice/ctr-{name}.scope")


    start_all()
    machine.wait_for_unit("contain-bpf-loader.service")
    machine.wait_for_unit("contain-resolver.service")
    machine.wait_for_unit("contain-policyd.service")
    machine.wait_for_unit("containerd.service")

    with subtest("setup"):
        assert_managed_parent(machine, "/sys/fs/cgroup/contain.slice")
        machine.succeed("ctr -n default images import ${common.image}")
        machine.succeed("mkdir -p /srv/www && echo contain-ok > /srv/www/index.html")
        machine.succeed(
            "systemd-run --unit contain-test-httpd ${pkgs.busybox}/bin/httpd -f -p 8080 -h /srv/www"
        )
        machine.wait_for_open_port(8080)
        ctr_start("free", "10.231.1.1", "10.231.1.2")
        ctr_start("blocked", "10.231.2.1", "10.231.2.2", label="block")
        machine.wait_until_succeeds(
            in_ctr("free", "wget -q -T 3 -O- http://10.231.1.1:8080/") + " | grep -q contain-ok",
            timeout=120,
        )

    with subtest("control: the unlabelled container reaches the host"):
        expect_allowed(machine, in_ctr("free", "ping -c 1 -W 3 10.231.1.1"), "free ping")
        expect_allowed(machine, in_ctr("free", "rawicmp 10.231.1.1"), "free raw icmp")

    with subtest("egress=block under containerd: TCP, ping and raw ICMP are denied"):
        expect_denied(machine, in_ctr("blocked", "wget -q -T 5 -O- http://10.231.2.1:8080/"), "blocked tcp")
        expect_denied(machine, in_ctr("blocked", "ping -c 1 -W 3 10.231.2.1"), "blocked ping")
        expect_denied(machine, in_ctr("blocked", "rawicmp 10.231.2.1"), "blocked raw icmp")
  '';
}
