# Evaluates nixos/module.nix with the stub lib/pkgs and the stub NixOS base,
# for a sample configuration and a few variants, and returns a JSON-able
# summary that offline-check.sh asserts on.
let
  lib = import ./lib.nix;
  pkgs = import ./pkgs.nix { inherit lib; };

  eval =
    modules:
    lib.evalModules {
      modules = [
        ./nixos-base.nix
        ../../nixos/module.nix
      ]
      ++ modules;
      specialArgs = {
        inherit pkgs;
        modulesPath = "/nixpkgs/nixos/modules";
      };
      strictPaths = [
        [
          "services"
          "contain"
        ]
      ];
    };

  fails = v: !(builtins.tryEval (builtins.deepSeq v v)).success;
  evaluates = v: (builtins.tryEval (builtins.deepSeq v v)).success;

  samplePolicy = {
    policy = [
      {
        name = "public-web";
        select.label.egress = "block";
        allow = [
          {
            to = [ "10.0.0.0/8" ];
            proto = "tcp";
            ports = [ 443 ];
          }
        ];
      }
      {
        name = "curler";
        select.name = "curler";
        process = [
          {
            exe = "/usr/bin/curl";
            allow = [
              {
                to = [ "1.1.1.0/24" ];
                proto = "icmp";
              }
            ];
          }
        ];
      }
    ];
  };

  sample = eval [
    {
      virtualisation.docker.enable = true;
      services.contain = {
        enable = true;
        policy = samplePolicy;
      };
    }
  ];

  unitSummary =
    cfg: name:
    let
      s = cfg.systemd.services.${name};
    in
    {
      inherit (s)
        description
        wantedBy
        wants
        requires
        after
        before
        environment
        startLimitIntervalSec
        reloadTriggers
        serviceConfig
        ;
    };

  summary =
    cfg:
    let
      containUnits = builtins.filter (lib.hasPrefix "contain-") (builtins.attrNames cfg.systemd.services);
    in
    {
      units = lib.genAttrs containUnits (unitSummary cfg);
      slices = lib.mapAttrs (_: s: { inherit (s) description; }) cfg.systemd.slices;
      tmpfiles = cfg.systemd.tmpfiles.rules;
      users = cfg.users.users;
      groups = builtins.attrNames cfg.users.groups;
      etc = lib.mapAttrs (_: e: {
        inherit (e) mode;
        source = toString e.source;
      }) cfg.environment.etc;
      systemPackages = map (p: p.name) cfg.environment.systemPackages;
      dockerSettings = cfg.virtualisation.docker.daemon.settings;
      # What the container runtimes run before they start.
      runtimeChecks = lib.mapAttrs (_: s: s.serviceConfig.ExecStartPre or null) (
        lib.filterAttrs (name: _: name == "docker" || name == "containerd") cfg.systemd.services
      );
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) cfg.assertions);
      contain = {
        inherit (cfg.services.contain)
          enable
          policy
          logLevel
          cgroupParent
          checkPolicy
          ;
        package = cfg.services.contain.package.name;
      };
    };

  opt = sample.options.services.contain;
  policySubOptions = opt.policy.type.getSubOptions [
    "services"
    "contain"
    "policy"
  ];
in
{
  options = {
    names = builtins.attrNames opt;
    types = lib.mapAttrs (_: o: o.type.name) opt;
    enableDefault = opt.enable.default;
    logLevelDefault = opt.logLevel.default;
    logLevelValues = opt.logLevel.type.nestedTypes.values;
    cgroupParentDefault = opt.cgroupParent.default;
    metricsListenAddressDefault = opt.metricsListenAddress.default;
    metricsAllowedClientsDefault = opt.metricsAllowedClients.default;
    policyDefault = opt.policy.default;
    policySubOptions = builtins.attrNames policySubOptions;
    modeValues = policySubOptions.mode.type.nestedTypes.values;
    unknownContainerValues = policySubOptions.unknown_container.type.nestedTypes.values;
    packageDefaultText = opt.package.defaultText.text;
  };

  sample = summary sample.config;

  variants = {
    # Without Docker, nothing is set for it.
    noDocker =
      (eval [
        {
          services.contain.enable = true;
        }
      ]).config.virtualisation.docker.daemon.settings;

    # A user's own cgroup-parent for Docker wins over the module's default.
    userDockerParent =
      (eval [
        {
          virtualisation.docker.enable = true;
          virtualisation.docker.daemon.settings."cgroup-parent" = "mine.slice";
          services.contain.enable = true;
        }
      ]).config.virtualisation.docker.daemon.settings."cgroup-parent";

    # containerd alone: its unit checks, and no Docker unit appears.
    containerdChecks =
      (summary
        (eval [
          {
            virtualisation.containerd.enable = true;
            services.contain.enable = true;
          }
        ]).config
      ).runtimeChecks;

    # A nested slice: its cgroup lives under its parent slices.
    nestedSlice =
      let
        c =
          (eval [
            {
              virtualisation.docker.enable = true;
              services.contain = {
                enable = true;
                cgroupParent = "contain-docker.slice";
              };
            }
          ]).config;
      in
      {
        execStart = c.systemd.services.contain-bpf-loader.serviceConfig.ExecStart;
        dockerCheck = c.systemd.services.docker.serviceConfig.ExecStartPre;
        slices = builtins.attrNames c.systemd.slices;
        requires = c.systemd.services.contain-bpf-loader.requires;
        dockerParent = c.virtualisation.docker.daemon.settings."cgroup-parent";
      };

    # Typed policy keys pass through; audit mode renders.
    auditPolicy =
      (eval [
        {
          services.contain = {
            enable = true;
            policy.mode = "audit";
            policy.unknown_container = "audit";
          };
        }
      ]).config.services.contain.policy;

    # Without checkPolicy the rendered file is used directly.
    uncheckedSource = toString (
      (eval [
        {
          services.contain = {
            enable = true;
            checkPolicy = false;
          };
        }
      ]).config.environment.etc."contain/policy.toml".source
    );

    # Metrics off: policyd back in its private network namespace.
    noMetrics =
      let
        c =
          (eval [
            {
              services.contain = {
                enable = true;
                metricsListenAddress = null;
              };
            }
          ]).config;
      in
      c.systemd.services.contain-policyd.serviceConfig;

    # Metrics on IPv6 loopback, for the private network's clients too.
    ipv6Metrics =
      (eval [
        {
          services.contain = {
            enable = true;
            metricsListenAddress = "[::1]:9879";
            metricsAllowedClients = [
              "localhost"
              "10.0.0.0/8"
            ];
          };
        }
      ]).config.systemd.services.contain-policyd.serviceConfig;

    # Disabled: the module contributes nothing.
    disabled =
      let
        c = (eval [ { services.contain.enable = false; } ]).config;
      in
      {
        units = builtins.attrNames c.systemd.services;
        users = builtins.attrNames c.users.users;
        etc = builtins.attrNames c.environment.etc;
        slices = builtins.attrNames c.systemd.slices;
        packages = c.environment.systemPackages;
        dockerSettings = c.virtualisation.docker.daemon.settings;
      };
  };

  # Each must be refused (true = the evaluation failed, as NixOS would).
  rejected = {
    badMode =
      fails
        (eval [
          {
            services.contain = {
              enable = true;
              policy.mode = "sometimes";
            };
          }
        ]).config.services.contain.policy;
    badUnknownContainer =
      fails
        (eval [
          {
            services.contain = {
              enable = true;
              policy.unknown_container = "maybe";
            };
          }
        ]).config.services.contain.policy;
    nullInPolicy =
      fails
        (eval [
          {
            services.contain = {
              enable = true;
              policy.policy = [ { name = null; } ];
            };
          }
        ]).config.services.contain.policy;
    badLogLevel =
      fails
        (eval [
          {
            services.contain = {
              enable = true;
              logLevel = "loud";
            };
          }
        ]).config.services.contain.logLevel;
    metricsAddressWithoutPort =
      fails
        (eval [
          {
            services.contain = {
              enable = true;
              metricsListenAddress = "localhost";
            };
          }
        ]).config.services.contain.metricsListenAddress;
    cgroupParentNotASlice =
      fails
        (eval [
          {
            services.contain = {
              enable = true;
              cgroupParent = "/sys/fs/cgroup/contain";
            };
          }
        ]).config.services.contain.cgroupParent;
    unknownOption =
      fails
        (eval [
          {
            services.contain = {
              enable = true;
              policyFile = "/etc/x";
            };
          }
        ]).config.services.contain;
  };

  # Control: the same evaluations with good values succeed.
  accepted = {
    sample = evaluates (summary sample.config);
    freeformPolicyKeys =
      evaluates
        (eval [
          {
            services.contain = {
              enable = true;
              policy.some_future_key = {
                nested = [
                  1
                  "two"
                ];
              };
            };
          }
        ]).config.services.contain.policy;
  };
}
