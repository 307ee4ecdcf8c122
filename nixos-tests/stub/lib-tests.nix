# Self-tests of the stub module system: the semantics the module relies on
# behave as in nixpkgs. Every attribute must evaluate to true.
let
  lib = import ./lib.nix;
  inherit (lib)
    mkOption
    types
    mkIf
    mkDefault
    mkForce
    mkMerge
    mkBefore
    ;

  ev = modules: (lib.evalModules { inherit modules; }).config;
  fails = v: !(builtins.tryEval (builtins.deepSeq v v)).success;

  opts = {
    options = {
      a = mkOption {
        type = types.str;
        default = "d";
      };
      l = mkOption {
        type = types.listOf types.int;
        default = [ ];
      };
      e = mkOption {
        type = types.enum [
          "x"
          "y"
        ];
        default = "x";
      };
      s = mkOption {
        type = types.attrsOf types.int;
        default = { };
      };
      sub = mkOption {
        default = { };
        type = types.submodule {
          freeformType = types.attrsOf types.anything;
          options.m = mkOption {
            type = types.enum [
              "p"
              "q"
            ];
            default = "p";
          };
        };
      };
      set.x = mkOption {
        type = types.bool;
        default = false;
      };
      slice = mkOption {
        type = types.strMatching "[a-z]+\\.slice";
        default = "a.slice";
      };
    };
  };
in
{
  defaultUsed = (ev [ opts ]).a == "d";
  plainBeatsMkDefault =
    (ev [
      opts
      { a = "p"; }
      { a = mkDefault "m"; }
    ]).a == "p";
  mkForceBeatsPlain =
    (ev [
      opts
      { a = "p"; }
      { a = mkForce "f"; }
    ]).a == "f";
  mkIfFalseDropped = (ev [ opts { a = mkIf false "x"; } ]).a == "d";
  mkIfTrueKept = (ev [ opts { a = mkIf true "t"; } ]).a == "t";
  mkMergeMerges =
    (ev [
      opts
      {
        config = mkMerge [
          { l = [ 1 ]; }
          (mkIf true { l = [ 2 ]; })
          (mkIf false { l = [ 3 ]; })
        ];
      }
    ]).l == [
      1
      2
    ];
  listsConcatenate =
    (ev [
      opts
      { l = [ 1 ]; }
      { l = [ 2 ]; }
    ]).l == [
      1
      2
    ];
  mkBeforeOrders =
    (ev [
      opts
      { l = [ 1 ]; }
      { l = mkBefore [ 0 ]; }
    ]).l == [
      0
      1
    ];
  conflictingValuesRejected = fails (
    ev [
      opts
      { a = "x"; }
      { a = "y"; }
    ]
  ).a;
  enumRejectsOthers = fails (ev [ opts { e = "z"; } ]).e;
  strRejectsInt = fails (ev [ opts { a = 1; } ]).a;
  strMatchingChecks = (ev [ opts { slice = "b.slice"; } ]).slice == "b.slice" && fails (ev [ opts { slice = "b"; } ]).slice;
  attrsOfDropsFalseMkIf =
    (ev [
      opts
      {
        s.a = 1;
        s.b = mkIf false 2;
      }
    ]).s == {
      a = 1;
    };
  submoduleFreeformKeepsExtraKeys =
    (ev [
      opts
      { sub.k = [ 1 ]; }
    ]).sub == {
      m = "p";
      k = [ 1 ];
    };
  submoduleTypedKeyChecked = fails (ev [ opts { sub.m = "r"; } ]).sub;
  undeclaredOptionInStrictSetRejected = fails (
    lib.evalModules {
      modules = [
        opts
        { set.y = true; }
      ];
      strictPaths = [ [ "set" ] ];
    }
  ).config.set;
  undeclaredElsewhereAccepted = (ev [ opts { other.thing = 1; } ]).other.thing == 1;
  configMkIfDoesNotRecurse =
    (ev [
      opts
      (
        { config, ... }:
        {
          config = mkIf (config.a == "p") { l = [ 7 ]; };
        }
      )
      { a = "p"; }
    ]).l == [ 7 ];
  freeformLeafPriorities =
    (ev [
      { foo.bar = mkDefault 1; }
      { foo.bar = 2; }
    ]).foo.bar == 2;
  unsupportedModuleAttributeRejected = fails (ev [
    {
      options = { };
      foo = 1;
    }
  ]);
  packageOptionDefaultIsLazy =
    let
      pkgs = { };
      c =
        (lib.evalModules {
          modules = [
            { options.p = lib.mkPackageOption pkgs "missing" { }; }
            {
              p = mkDefault {
                type = "derivation";
                name = "given";
                outPath = "/nix/store/x-given";
              };
            }
          ];
        }).config;
    in
    c.p.name == "given";
}
