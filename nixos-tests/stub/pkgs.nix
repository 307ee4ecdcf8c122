# A stand-in for the parts of nixpkgs that the module, the package and the
# test definitions call. Builders do not build: they return a derivation-like
# attribute set (type = "derivation", a fake store path as outPath) that keeps
# the arguments it was given, so the offline check can look at them. Nothing
# here writes to the Nix store.
{ lib }:

let
  system = "x86_64-linux";

  fakeHash =
    name: builtins.substring 0 32 (builtins.hashString "sha256" name);

  # A derivation-like value; `attrs` are kept (minus builder scripts, which
  # may interpolate local files and so would need the store).
  stubDerivation =
    name: attrs:
    let
      # Same name, different arguments: a different (fake) store path.
      identity = "${name}:${builtins.concatStringsSep "," (builtins.attrNames attrs)}";
      self =
        (builtins.removeAttrs attrs [
          "buildCommand"
          "buildPhase"
          "installPhase"
          "preBuild"
          "postBuild"
          "script"
          "text"
        ])
        // {
          type = "derivation";
          inherit name system;
          outPath = "/nix/store/${fakeHash identity}-${name}";
          drvPath = "/nix/store/${fakeHash "drv-${identity}"}-${name}.drv";
          outputs = [ "out" ];
          out = self;
          meta = attrs.meta or { };
          stubArgs = builtins.attrNames attrs;
          override = args: stubDerivation "${name}-overridden" (attrs // args);
          overrideAttrs = f: stubDerivation name (attrs // (if builtins.isFunction f then f attrs else f));
        }
        // (attrs.passthru or { });
    in
    self;

  simple = name: stubDerivation name { };

  withBin =
    name: mainProgram:
    stubDerivation name {
      meta = {
        inherit mainProgram;
      };
    };

  callPackageWith =
    autoArgs: fn: args:
    let
      f = if builtins.isFunction fn then fn else import fn;
      wanted = builtins.functionArgs f;
    in
    f (builtins.intersectAttrs wanted autoArgs // args);

  formatType =
    description: leaves:
    let
      valueType =
        lib.types.oneOf (
          leaves
          ++ [
            (lib.types.attrsOf valueType)
            (lib.types.listOf valueType)
          ]
        )
        // {
          inherit description;
        };
    in
    lib.types.attrsOf valueType;

  rustc = stubDerivation "rustc-wrapper-1.95.0" {
    passthru = {
      unwrapped = simple "rustc-1.95.0";
      src = simple "rustc-1.95.0-src.tar.gz";
      llvmPackages = { };
    };
  };

  pkgs = {
    inherit lib system stubDerivation;
    stdenv = {
      hostPlatform = {
        inherit system;
        isLinux = true;
        isx86 = true;
      };
      mkDerivation =
        attrs:
        stubDerivation (attrs.name or "${attrs.pname}-${attrs.version}") attrs;
    };
    buildPackages = pkgs;
    callPackage = callPackageWith pkgs;

    # the package under test, for the module on its own (mkPackageOption)
    contain = withBin "contain-0.1.0" "policyd";

    coreutils = simple "coreutils-9.5";
    busybox = simple "busybox-1.36.1";
    iputils = simple "iputils-20240905";
    iproute2 = simple "iproute2-6.11.0";
    curl = stubDerivation "curl-8.11.0" {
      meta.mainProgram = "curl";
      passthru.bin = simple "curl-8.11.0-bin";
    };
    bpftools = simple "bpftools-6.12";
    jq = simple "jq-1.7.1";
    bpf-linker = withBin "bpf-linker-0.9.15" "bpf-linker";
    cargo = simple "cargo-1.95.0";
    inherit rustc;

    runCommand = name: env: script: stubDerivation name env;
    runCommandCC = name: env: script: stubDerivation name env;
    writeText = name: text: stubDerivation name { };
    writeShellScript = name: text: stubDerivation name { };
    symlinkJoin = args: stubDerivation args.name args;
    buildEnv = args: stubDerivation args.name args;

    rustPlatform = {
      buildRustPackage =
        attrs:
        let
          a = if builtins.isFunction attrs then attrs a else attrs;
        in
        stubDerivation "${a.pname}-${a.version}" a;
      importCargoLock =
        {
          lockFile,
          allowBuiltinFetchGit ? false,
          outputHashes ? { },
        }:
        assert builtins.pathExists lockFile;
        stubDerivation "cargo-vendor-dir" {
          lockFile = toString lockFile;
          # As nixpkgs' import-cargo-lock.nix writes it into
          # $out/.cargo/config.toml: a path relative to the build directory,
          # where cargoSetupHook copies cargoDeps under its own name.
          cargoConfigVendorDirectory = "cargo-vendor-dir";
        };
      cargoSetupHook = simple "cargo-setup-hook.sh";
      rustLibSrc = simple "rust-lib-src";
      rustVendorSrc = simple "rust-vendor-src";
    };

    formats = {
      toml =
        { }:
        {
          type = formatType "TOML value" (
            with lib.types;
            [
              bool
              int
              float
              str
              path
            ]
          );
          generate = name: value: stubDerivation name { inherit value; };
        };
      json =
        { }:
        {
          type = formatType "JSON value" (
            with lib.types;
            [
              (nullOr bool)
              int
              float
              str
              path
            ]
          );
          generate = name: value: stubDerivation name { inherit value; };
        };
    };

    dockerTools.buildImage = args: stubDerivation "docker-image-${args.name}.tar.gz" args;

    # Evaluates each node with the stub module system (the module under test,
    # the stub NixOS base, the node's modules) and the test script against
    # those nodes; returns them for inspection instead of a VM run.
    testers.runNixOSTest =
      test:
      let
        t = if builtins.isFunction test then test { inherit pkgs lib; } else test;
        evalNode =
          name: module:
          (lib.evalModules {
            modules = [
              ./nixos-base.nix
              module
            ]
            ++ lib.toList (t.defaults or [ ]);
            specialArgs = {
              inherit pkgs;
              modulesPath = "/nixpkgs/nixos/modules";
              nodes = nodes;
            };
            strictPaths = [
              [
                "services"
                "contain"
              ]
            ];
          }).config;
        nodes = builtins.mapAttrs evalNode t.nodes;
        script = if builtins.isFunction t.testScript then t.testScript { inherit nodes; } else t.testScript;
      in
      stubDerivation "vm-test-run-${t.name}" {
        passthru = {
          testName = t.name;
          inherit nodes script;
        };
      };
  };
in
pkgs
