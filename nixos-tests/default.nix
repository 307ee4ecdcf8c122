# The NixOS VM tests, as flake checks: `nix flake check` (or
# `nix build .#checks.x86_64-linux.docker`) boots each in QEMU.
{ pkgs, self }:

{
  docker = pkgs.testers.runNixOSTest (import ./docker.nix { inherit pkgs self; });
  containerd = pkgs.testers.runNixOSTest (import ./containerd.nix { inherit pkgs self; });
}
