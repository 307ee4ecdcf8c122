# The slice of the NixOS option tree that nixos/module.nix and the VM test
# nodes define or read, declared with NixOS' shapes and types, so that the
# stub evaluation merges them the way NixOS does (attrsOf submodules drop
# definitions under a false mkIf, lists concatenate, unit options that are
# not declared here are refused, as NixOS refuses unknown options).
# Everything not declared here is accepted freeform (see lib.nix).
{ lib, pkgs, ... }:

let
  inherit (lib) mkOption types;

  listOpt =
    elemType:
    mkOption {
      type = types.listOf elemType;
      default = [ ];
    };
  strOrPackage = types.either types.str types.package;

  # systemd unit options: lists concatenate, single values must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      if builtins.all (d: builtins.isList d.value) defs then
        builtins.concatLists (map (d: d.value) defs)
      else
        lib.mergeEqualOption loc defs;
  };

  commonUnitOptions = {
    enable = mkOption {
      type = types.bool;
      default = true;
    };
    description = mkOption {
      type = types.str;
      default = "";
    };
    documentation = listOpt types.str;
    wantedBy = listOpt types.str;
    requiredBy = listOpt types.str;
    upheldBy = listOpt types.str;
    wants = listOpt types.str;
    requires = listOpt types.str;
    upholds = listOpt types.str;
    bindsTo = listOpt types.str;
    partOf = listOpt types.str;
    conflicts = listOpt types.str;
    after = listOpt types.str;
    before = listOpt types.str;
    onFailure = listOpt types.str;
    unitConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
    startLimitIntervalSec = mkOption {
      type = types.nullOr types.int;
      default = null;
    };
    startLimitBurst = mkOption {
      type = types.nullOr types.int;
      default = null;
    };
    reloadTriggers = listOpt unitOption;
    restartTriggers = listOpt unitOption;
  };

  serviceOptions = commonUnitOptions // {
    serviceConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
    environment = mkOption {
      type = types.attrsOf (types.nullOr (types.either types.str types.path));
      default = { };
    };
    path = listOpt strOrPackage;
    script = mkOption {
      type = types.lines;
      default = "";
    };
    preStart = mkOption {
      type = types.lines;
      default = "";
    };
    postStart = mkOption {
      type = types.lines;
      default = "";
    };
    restartIfChanged = mkOption {
      type = types.bool;
      default = true;
    };
    reloadIfChanged = mkOption {
      type = types.bool;
      default = false;
    };
    stopIfChanged = mkOption {
      type = types.bool;
      default = true;
    };
  };

  sliceOptions = commonUnitOptions // {
    sliceConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
  };
in
{
  options = {
    assertions = listOpt types.unspecified;
    warnings = listOpt types.str;

    system.build.toplevel = mkOption {
      type = types.package;
      default = pkgs.stubDerivation "nixos-system-stub" { };
    };

    environment.systemPackages = listOpt types.package;
    environment.etc = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options = {
            enable = mkOption {
              type = types.bool;
              default = true;
            };
            source = mkOption { type = types.path; };
            text = mkOption {
              type = types.nullOr types.lines;
              default = null;
            };
            mode = mkOption {
              type = types.str;
              default = "symlink";
            };
            user = mkOption {
              type = types.str;
              default = "+0";
            };
            group = mkOption {
              type = types.str;
              default = "+0";
            };
            target = mkOption {
              type = types.str;
              default = "";
            };
          };
        }
      );
    };

    users.users = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options = {
            isSystemUser = mkOption {
              type = types.bool;
              default = false;
            };
            isNormalUser = mkOption {
              type = types.bool;
              default = false;
            };
            group = mkOption {
              type = types.str;
              default = "";
            };
            extraGroups = listOpt types.str;
            description = mkOption {
              type = types.str;
              default = "";
            };
            uid = mkOption {
              type = types.nullOr types.int;
              default = null;
            };
            home = mkOption {
              type = types.str;
              default = "/var/empty";
            };
            createHome = mkOption {
              type = types.bool;
              default = false;
            };
          };
        }
      );
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options = {
            gid = mkOption {
              type = types.nullOr types.int;
              default = null;
            };
            members = listOpt types.str;
          };
        }
      );
    };

    systemd.services = mkOption {
      default = { };
      type = types.attrsOf (types.submodule { options = serviceOptions; });
    };
    systemd.slices = mkOption {
      default = { };
      type = types.attrsOf (types.submodule { options = sliceOptions; });
    };
    systemd.tmpfiles.rules = listOpt types.str;

    specialisation = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options = {
            inheritParentConfig = mkOption {
              type = types.bool;
              default = true;
            };
            # a deferred module in NixOS; kept as given here
            configuration = mkOption {
              type = types.raw;
              default = { };
            };
          };
        }
      );
    };

    virtualisation.docker = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      daemon.settings = mkOption {
        default = { };
        type = types.submodule { freeformType = (pkgs.formats.json { }).type; };
      };
    };
    virtualisation.containerd.enable = mkOption {
      type = types.bool;
      default = false;
    };
  };
}
