# NixOS module for contain: `services.contain`.
#
# Three daemons, each with the least privilege its job needs (see DESIGN.md):
#
#   contain-bpf-loader  root, capability bounding set CAP_BPF CAP_NET_ADMIN
#                       CAP_SYS_ADMIN CAP_PERFMON and nothing else. Attaches the
#                       programs to the managed parent cgroup (a systemd slice that
#                       Docker uses as its `cgroup-parent`) before Docker or
#                       containerd start, so every container inherits them
#                       before its first process runs. Docker and containerd
#                       check that they are attached before they start
#                       (`bpf-loader --check-attached`): a loader that failed
#                       keeps them down, never their containers unfiltered.
#   contain-resolver    root uid (it connects to the root-owned containerd and
#                       Docker sockets) with only CAP_SYS_PTRACE and
#                       CAP_DAC_READ_SEARCH, to read other processes' /proc entries.
#   contain-policyd     the unprivileged system user `contain`, no capabilities
#                       at all, no network namespace of its own (only Unix sockets).
#
# Sockets live in /run/contain, a directory owned by root:contain with mode 1770:
# the group may create its own sockets there (policyd), the sticky bit keeps one
# daemon from removing or replacing another's socket, and everyone else stays out.
# The root daemons run with Group=contain so that the sockets they create belong
# to that group (chgrp to one's own group needs no CAP_CHOWN) and UMask=0007.
# Whether a peer may use a socket is decided by the server itself (SO_PEERCRED),
# the file mode is only the outer fence.
#
# Standalone use (without the flake's wrapper module, which sets `package`):
# add the flake's overlay so that `pkgs.contain` exists, or set
# `services.contain.package` yourself.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.contain;

  inherit (lib)
    mkOption
    mkEnableOption
    mkPackageOption
    mkIf
    mkMerge
    mkDefault
    types
    literalExpression
    ;

  runDir = "/run/contain";
  loaderSocket = "${runDir}/loader.sock";
  resolverSocket = "${runDir}/resolver.sock";
  policydSocket = "${runDir}/policyd.sock";

  settingsFormat = pkgs.formats.toml { };

  # The policy rendered from Nix. With `checkPolicy`, `policyd check` validates
  # it when the system is built, so a bad policy fails `nixos-rebuild` instead
  # of being refused (and the old one kept) at run time.
  renderedPolicy = settingsFormat.generate "contain-policy.toml" cfg.policy;
  checkedPolicy =
    if cfg.checkPolicy then
      pkgs.runCommand "contain-policy.toml"
        {
          preferLocalBuild = true;
        }
        ''
          ${cfg.package}/bin/policyd check ${renderedPolicy}
          cp ${renderedPolicy} $out
        ''
    else
      renderedPolicy;

  # policyd reads the policy from a stable path rather than from the store path
  # itself: a changed policy then only changes the file and `reloadTriggers`,
  # not the unit, so switching configurations reloads policyd (`policyd reload`, an atomic
  # swap that keeps the running policy if the new one is refused) instead of
  # restarting it.
  policyFile = "/etc/contain/policy.toml";

  # "a-b.slice" lives at a.slice/a-b.slice in the cgroup tree (systemd.slice(5)).
  sliceName = lib.removeSuffix ".slice" cfg.cgroupParent;
  metricsListen = if cfg.metricsListenAddress == null then "off" else cfg.metricsListenAddress;
  sliceParts = lib.splitString "-" sliceName;
  cgroupRelPath = lib.concatStringsSep "/" (
    lib.genList (
      i: (lib.concatStringsSep "-" (lib.take (i + 1) sliceParts)) + ".slice"
    ) (builtins.length sliceParts)
  );
  cgroupPath = "/sys/fs/cgroup/${cgroupRelPath}";
  # A container runtime starts only with contain's programs attached to the
  # managed parent: ordering alone lets it start when the loader failed.
  runtimeCheck = "${cfg.package}/bin/bpf-loader --check-attached ${cgroupPath}";

  environment = {
    RUST_LOG = cfg.logLevel;
  };

  # Hardening shared by the three daemons. Each adds what it needs on top.
  commonServiceConfig = {
    UMask = "0007";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictSUIDSGID = true;
    RestrictRealtime = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    RemoveIPC = true;
  };
in
{
  options.services.contain = {
    enable = mkEnableOption "contain, the per-container, per-process egress firewall (eBPF)";

    package = mkPackageOption pkgs "contain" { };

    policy = mkOption {
      description = ''
        The policy, written in Nix and rendered to TOML (see DESIGN.md, "Policy").
        Any key is accepted and passed through; `mode` and `unknown_container`
        are checked here. A list such as `policy = [ { ... } ]` becomes an array
        of tables (`[[policy]]`).
      '';
      default = { };
      example = literalExpression ''
        {
          mode = "enforce";
          unknown_container = "deny";
          policy = [
            {
              name = "public-web";
              select.label.egress = "block";
              allow = [ { to = [ "10.0.0.0/8" ]; proto = "tcp"; ports = [ 443 ]; } ];
            }
            {
              name = "curler";
              select.name = "curler";
              process = [
                {
                  exe = "/usr/bin/curl";
                  allow = [ { to = [ "1.1.1.0/24" ]; proto = "tcp"; ports = [ 80 443 ]; } ];
                }
              ];
            }
          ];
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          mode = mkOption {
            type = types.enum [
              "enforce"
              "audit"
            ];
            default = "enforce";
            description = ''
              `enforce` denies what the policy does not allow; `audit` denies
              nothing and logs what would have been denied.
            '';
          };
          unknown_container = mkOption {
            type = types.enum [
              "deny"
              "allow"
              "audit"
            ];
            default = "deny";
            description = ''
              Verdict for a cgroup under the managed parent that the resolver has
              not mapped to a container yet (the first packets of a new container).
            '';
          };
        };
      };
    };

    checkPolicy = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Validate the rendered policy with `policyd check` when the system is
        built.
      '';
    };

    logLevel = mkOption {
      type = types.enum [
        "error"
        "warn"
        "info"
        "debug"
        "trace"
      ];
      default = "info";
      description = "Log level of the three daemons (passed as `RUST_LOG`).";
    };

    metricsListenAddress = mkOption {
      # IP:PORT, IPv6 in brackets; what `policyd daemon --metrics-listen` takes.
      type = types.nullOr (types.strMatching "(\\[[0-9A-Fa-f:.]+]|[0-9.]+):[0-9]+");
      default = "127.0.0.1:9879";
      example = "[::1]:9879";
      description = ''
        Where policyd serves Prometheus metrics (`/metrics`, plain HTTP, no
        authentication), or `null` for none. Keep it on loopback, or put a
        proxy in front: the page names containers and policies. When set,
        policyd gets IPv4/IPv6 sockets and leaves the private network
        namespace it otherwise runs in, and systemd's IP firewall limits it
        to `metricsAllowedClients`.
      '';
    };

    metricsAllowedClients = mkOption {
      type = types.listOf types.str;
      default = [ "localhost" ];
      example = [
        "localhost"
        "10.0.0.0/8"
      ];
      description = ''
        Addresses allowed to reach policyd's metrics endpoint (systemd's
        `IPAddressAllow=`; everything else is denied with `IPAddressDeny=any`).
      '';
    };

    cgroupParent = mkOption {
      # A systemd slice: Docker's systemd cgroup driver (the default on cgroup
      # v2) requires the cgroup-parent to be a slice name, and systemd owns the
      # cgroup tree, so the managed parent is a slice systemd creates.
      type = types.strMatching "[A-Za-z0-9_:.]+(-[A-Za-z0-9_:.]+)*\\.slice";
      default = "contain.slice";
      example = "kubepods.slice";
      description = ''
        The systemd slice whose cgroup the programs are attached to (with
        BPF_F_ALLOW_MULTI, so every container cgroup created below it inherits
        them before its first process runs). Docker's `cgroup-parent` is set to
        it when Docker is enabled. For containerd, start containers in it
        (`ctr run --runc-systemd-cgroup --cgroup ${"$"}{slice}:ctr:NAME`).
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      environment.systemPackages = [ cfg.package ];

      environment.etc."contain/policy.toml".source = checkedPolicy;

      users.users.contain = {
        isSystemUser = true;
        group = "contain";
        description = "contain policy daemon";
      };
      users.groups.contain = { };

      # /run/contain exists from early boot, so that the resolver and policyd
      # can start (and get it bind-mounted read-write) even while the loader is
      # restarting. The loader's RuntimeDirectory= has the same owner and mode,
      # so neither undoes the other.
      systemd.tmpfiles.rules = [ "d ${runDir} 1770 root contain - -" ];

      # The managed parent. Slices' cgroups exist while the slice is active;
      # the loader requires it, so it is active before the loader attaches.
      systemd.slices.${sliceName} = {
        description = "contain: containers whose egress is filtered";
      };

      systemd.services.contain-bpf-loader = {
        description = "contain eBPF loader (attaches the egress programs, owns the maps)";
        wantedBy = [
          "multi-user.target"
          "docker.service"
          "containerd.service"
        ];
        # Enforcement is in place before any container can start.
        before = [
          "docker.service"
          "containerd.service"
        ];
        requires = [ cfg.cgroupParent ];
        after = [
          cfg.cgroupParent
          "systemd-tmpfiles-setup.service"
        ];
        inherit environment;
        # Keep restarting: links and maps are pinned, so enforcement survives a
        # crash, but events and map updates need the loader.
        startLimitIntervalSec = 0;
        serviceConfig = commonServiceConfig // {
          # "Started" once the loader says so (READY=1): it does after the
          # programs are attached to the managed parent and its socket is
          # bound, so anything ordered after it (Docker, containerd) starts
          # with enforcement in place. Not the socket file's existence: one
          # left by a predecessor (the runtime directory is preserved) would
          # say so too early.
          Type = "notify";
          NotifyAccess = "main";
          # policyd runs as user contain: the loader admits exactly root and that uid.
          ExecStart = "${cfg.package}/bin/bpf-loader --socket ${loaderSocket} --attach-parent ${cgroupPath} --client-user contain";
          Restart = "always";
          RestartSec = "1s";
          # root (the default User=), with these capabilities and nothing else:
          # CAP_BPF to load programs and create maps, CAP_PERFMON for the
          # verifier's pointer rules and tracepoints, CAP_NET_ADMIN for the
          # cgroup_skb/sock programs and the veth backstop's tc programs (it
          # follows rtnetlink, hence AF_NETLINK), CAP_SYS_ADMIN for attaching
          # to cgroups and pinning in bpffs. It reads the kernel's BTF under
          # /sys (read-only below) for the exec program's offsets. A revoked
          # flow's socket is aborted from inside its network namespace:
          # CAP_SYS_PTRACE to open a container process's /proc/<pid>/ns/net
          # (the kernel grants it only to a tracer), CAP_SYS_ADMIN to enter
          # it, CAP_NET_ADMIN for SOCK_DESTROY.
          CapabilityBoundingSet = [
            "CAP_BPF"
            "CAP_NET_ADMIN"
            "CAP_SYS_ADMIN"
            "CAP_PERFMON"
            "CAP_SYS_PTRACE"
          ];
          AmbientCapabilities = [ ];
          # Group contain: the socket it creates belongs to contain.
          Group = "contain";
          RuntimeDirectory = "contain";
          RuntimeDirectoryMode = "1770";
          RuntimeDirectoryPreserve = "yes";
          # /sys is read-only except bpffs, where the programs, links and maps
          # are pinned, and the managed parent cgroup (the loader creates it if
          # it is missing; "-": no error if it does not exist yet). Not
          # ProtectKernelTunables=: it also makes tracefs inaccessible, and the
          # exec/fork/exit tracepoints need it.
          ReadOnlyPaths = [ "/sys" ];
          ReadWritePaths = [
            "/sys/fs/bpf"
            "-${cgroupPath}"
          ];
          # Maps are charged to memcg on current kernels; older ones still
          # count them against RLIMIT_MEMLOCK.
          LimitMEMLOCK = "infinity";
          # Network namespaces only: the loader enters a revoked flow's.
          RestrictNamespaces = "net";
          RestrictAddressFamilies = [
            "AF_UNIX"
            "AF_NETLINK"
          ];
          # No SystemCallFilter: bpf(2) and perf_event_open(2) are outside
          # @system-service, and the bounding set above is the real limit.
        };
      };

      systemd.services.contain-resolver = {
        description = "contain resolver (container inventory: veth, netns, cgroup, container)";
        wantedBy = [ "multi-user.target" ];
        after = [
          "contain-bpf-loader.service"
          "containerd.service"
          "docker.service"
        ];
        inherit environment;
        serviceConfig = commonServiceConfig // {
          Type = "simple";
          ExecStart = "${cfg.package}/bin/resolver --socket ${resolverSocket}";
          Restart = "always";
          RestartSec = "1s";
          # uid 0, because the containerd socket (and Docker's) is root:root
          # 0660 (docker.sock is root:docker): connecting needs write
          # permission on it, which a non-root user would only get through
          # CAP_DAC_OVERRIDE or by changing the runtimes' socket groups.
          # Capabilities, and why:
          #   CAP_SYS_PTRACE       opening /proc/PID/ns/net and reading
          #                        /proc/PID/exe of container processes passes a
          #                        ptrace access check; container processes keep
          #                        capabilities the resolver does not have, and
          #                        often another uid, so it fails without this.
          #   CAP_DAC_READ_SEARCH  listing and reading /proc/PID/{fd,root,...}
          #                        entries and runtime state directories
          #                        (0700, other owners) without owning them.
          # Not CAP_NET_ADMIN: rtnetlink dumps (RTM_GETLINK, RTM_GETNSID) and
          # link notifications are open to every process; only changes need it.
          # A container's addresses are read from /proc/PID/net/{fib_trie,
          # if_inet6}, which need nothing more; an RTM_GETADDR dump into its
          # namespace would need CAP_NET_ADMIN, which a reader of what
          # containers write does not get.
          # Not CAP_SYS_ADMIN: the resolver never setns(2)s into a container;
          # the veth's peer netns comes from IFLA_LINK_NETNSID/RTM_GETNSID.
          CapabilityBoundingSet = [
            "CAP_SYS_PTRACE"
            "CAP_DAC_READ_SEARCH"
          ];
          AmbientCapabilities = [ ];
          Group = "contain";
          ReadWritePaths = [ runDir ];
          ProtectKernelTunables = true;
          ProtectControlGroups = true;
          # It must see every process.
          ProtectProc = "default";
          ProcSubset = "all";
          RestrictNamespaces = true;
          RestrictAddressFamilies = [
            "AF_UNIX"
            "AF_NETLINK"
          ];
          IPAddressDeny = "any";
          SystemCallFilter = [ "@system-service" ];
          SystemCallErrorNumber = "EPERM";
        };
      };

      systemd.services.contain-policyd = {
        description = "contain policy daemon (compiles the policy, drives the loader)";
        wantedBy = [ "multi-user.target" ];
        wants = [
          "contain-bpf-loader.service"
          "contain-resolver.service"
        ];
        after = [
          "contain-bpf-loader.service"
          "contain-resolver.service"
        ];
        inherit environment;
        # A new policy reloads policyd (`policyd reload`) instead of restarting it.
        reloadTriggers = [ checkedPolicy ];
        serviceConfig = commonServiceConfig // {
          Type = "simple";
          ExecStart = "${cfg.package}/bin/policyd daemon --policy ${policyFile} --socket ${policydSocket} --metrics-listen ${metricsListen}";
          # policyd reload, not a bare SIGHUP: a refused policy (or a loader
          # that is away) fails the reload, and so the switch, with policyd's
          # errors, instead of succeeding in silence.
          ExecReload = "${cfg.package}/bin/policyd --socket ${policydSocket} reload";
          Restart = "always";
          RestartSec = "1s";
          # The event log is policyd's stdout: journald's per-unit rate limit
          # (about 10 000 lines in 30 s) would drop every container's lines,
          # and policyd's own, once one container floods. policyd bounds its
          # lines itself, per container (held back ones are counted).
          LogRateLimitIntervalSec = 0;
          # Least privilege: an ordinary system user with no capabilities.
          # Running it as root "without capabilities" would still leave it uid 0,
          # owner of most of the file system. It reaches the loader and the
          # resolver through their sockets, which are group contain and admit
          # this user (SO_PEERCRED).
          User = "contain";
          Group = "contain";
          CapabilityBoundingSet = "";
          AmbientCapabilities = [ ];
          ReadWritePaths = [ runDir ];
          # Unix sockets on the file system work across network namespaces:
          # without metrics policyd needs no network at all; with them, only
          # the metrics clients may reach it.
          PrivateNetwork = cfg.metricsListenAddress == null;
          RestrictAddressFamilies =
            [ "AF_UNIX" ]
            ++ lib.optionals (cfg.metricsListenAddress != null) [
              "AF_INET"
              "AF_INET6"
            ];
          ProtectKernelTunables = true;
          ProtectControlGroups = true;
          # It reads no other process: peers' groups come from SO_PEERGROUPS.
          ProtectProc = "invisible";
          ProcSubset = "pid";
          RestrictNamespaces = true;
          PrivateUsers = false; # peer uids must stay real uids for SO_PEERCRED
          # Not ~@privileged: it holds chown(2), which binding the socket with
          # group contain calls; without capabilities the rest fails anyway.
          SystemCallFilter = [
            "@system-service"
            "~@resources"
          ];
          SystemCallErrorNumber = "EPERM";
        }
        // lib.optionalAttrs (cfg.metricsListenAddress != null) {
          IPAddressDeny = "any";
          IPAddressAllow = cfg.metricsAllowedClients;
        };
      };
    }

    (mkIf config.virtualisation.docker.enable {
      # Docker puts every container's cgroup under the managed parent.
      virtualisation.docker.daemon.settings."cgroup-parent" = mkDefault cfg.cgroupParent;
      systemd.services.docker.serviceConfig.ExecStartPre = [ runtimeCheck ];
    })

    (mkIf config.virtualisation.containerd.enable {
      systemd.services.containerd.serviceConfig.ExecStartPre = [ runtimeCheck ];
    })
  ]);
}
