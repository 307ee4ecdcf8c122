# eval-flake-with-lib.nix with the stub lib: what offline-check.sh evaluates.
import ./eval-flake-with-lib.nix { lib = import ./lib.nix; }
