# Calls flake.nix's `outputs` with a stub nixpkgs (stub lib + stub pkgs) and
# summarises what `nix flake check` would see: the packages and how they are
# built, the modules, the overlay, and each VM test with its nodes evaluated by
# the stub module system and its test script as a string.
#
# `lib`: the stub (eval-flake.nix, for offline-check.sh) or nixpkgs' real
# library (nixos-tests/real-lib-check.sh).
{ lib }:
let
  pkgs = import ./pkgs.nix { inherit lib; };
  system = "x86_64-linux";

  flake = import ../../flake.nix;
  nixpkgs = {
    inherit lib;
    legacyPackages.${system} = pkgs;
    outPath = "/nix/store/00000000000000000000000000000000-nixpkgs";
  };
  self =
    outputs
    // {
      outPath = toString ../..;
      inputs = {
        inherit nixpkgs;
      };
    };
  outputs = flake.outputs { inherit self nixpkgs; };

  names = map (x: x.name or (toString x));

  pkg = outputs.packages.${system}.default;
  ebpf = outputs.packages.${system}.contain-ebpf;

  nodeSummary =
    cfg:
    let
      units = builtins.filter (lib.hasPrefix "contain-") (builtins.attrNames cfg.systemd.services);
    in
    {
      containEnable = cfg.services.contain.enable;
      containPackage = cfg.services.contain.package.name;
      containPolicy = cfg.services.contain.policy;
      dockerEnable = cfg.virtualisation.docker.enable;
      containerdEnable = cfg.virtualisation.containerd.enable;
      dockerSettings = cfg.virtualisation.docker.daemon.settings;
      inherit units;
      execStart = lib.genAttrs units (u: cfg.systemd.services.${u}.serviceConfig.ExecStart);
      etcPolicyMode = cfg.environment.etc."contain/policy.toml".mode;
      specialisations = builtins.attrNames cfg.specialisation;
      systemPackages = names cfg.environment.systemPackages;
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) cfg.assertions);
    };

  testSummary = t: {
    name = t.testName;
    script = t.script;
    nodes = builtins.mapAttrs (_: nodeSummary) t.nodes;
  };
in
{
  description = flake.description;
  inputs = builtins.attrNames flake.inputs;
  nixpkgsUrl = flake.inputs.nixpkgs.url;
  outputs = builtins.attrNames outputs;

  packages = {
    names = builtins.attrNames outputs.packages.${system};
    default = {
      inherit (pkg) name pname version;
      args = pkg.stubArgs;
      ebpfObj = pkg.env.CONTAIN_EBPF_OBJ;
      inherit (pkg) cargoBuildFlags doCheck;
      cargoLock = toString pkg.cargoLock.lockFile;
      mainProgram = pkg.meta.mainProgram;
      ebpfPassthru = pkg.ebpf.name;
    };
    ebpf = {
      inherit (ebpf) name cargoRoot env;
      nativeBuildInputs = names ebpf.nativeBuildInputs;
      cargoDeps = names ebpf.cargoDeps.paths;
      cargoDepsName = ebpf.cargoDeps.name;
      cargoConfigVendorDirectories = map (p: p.cargoConfigVendorDirectory) (
        builtins.filter (p: p ? cargoConfigVendorDirectory) ebpf.cargoDeps.paths
      );
      lockFiles = map (p: p.lockFile) (builtins.filter (p: p ? lockFile) ebpf.cargoDeps.paths);
      dontFixup = ebpf.dontFixup;
      storePath = ebpf.outPath;
    };
  };

  overlay = (outputs.overlays.default pkgs pkgs).contain.name;

  nixosModules = {
    names = builtins.attrNames outputs.nixosModules;
    types = builtins.mapAttrs (_: builtins.typeOf) outputs.nixosModules;
  };

  checks = {
    names = builtins.attrNames outputs.checks.${system};
    package = outputs.checks.${system}.package.name;
    ebpf = outputs.checks.${system}.ebpf.name;
    docker = testSummary outputs.checks.${system}.docker;
    containerd = testSummary outputs.checks.${system}.containerd;
  };
}
