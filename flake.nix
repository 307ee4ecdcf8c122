{
  description = "contain: per-container, per-process egress firewall (eBPF) for Docker and containerd hosts";

  # nixpkgs only. nixos-unstable because the workspace needs rustc >= 1.95
  # (rust-version in Cargo.toml) and a bpf-linker whose LLVM matches rustc's.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # The VM tests and the eBPF build are exercised on x86_64-linux.
      systems = [ "x86_64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: prev: {
        contain = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (
        pkgs:
        let
          contain = pkgs.callPackage ./nix/package.nix { };
        in
        {
          default = contain;
          inherit contain;
          contain-ebpf = contain.ebpf;
        }
      );

      # The module itself, for use with the overlay or an explicit `package`.
      nixosModules.contain = ./nixos/module.nix;
      # The module with `services.contain.package` defaulting to this flake's
      # build, so `services.contain.enable = true;` is all a user writes.
      nixosModules.default =
        { pkgs, lib, ... }:
        {
          imports = [ ./nixos/module.nix ];
          services.contain.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      # `nix flake check`: the package (and its eBPF object) build, and NixOS VMs
      # with real Docker and containerd prove ping, TCP and raw ICMP are
      # filtered per container and per process.
      checks = forAllSystems (
        pkgs:
        {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          ebpf = self.packages.${pkgs.stdenv.hostPlatform.system}.contain-ebpf;
        }
        // import ./nixos-tests { inherit pkgs self; }
      );
    };
}
