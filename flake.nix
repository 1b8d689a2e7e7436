{
  description = "claude-chroot: run Claude Code on one project with a read-only system and an allowlisted network";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          # Claude Code is unfree: allow that one package, nothing else.
          config.allowUnfreePredicate = pkg: lib.getName pkg == "claude-code";
          overlays = [ self.overlays.default ];
        };

      forAllSystems = f: lib.genAttrs systems (system: f (pkgsFor system));
    in
    {
      lib.mkSandbox = pkgs: import ./nix/sandbox.nix { inherit pkgs; };
      # The default lists, to extend: `protectedPaths = defaults.protectedPaths ++ [ ... ]`.
      lib.defaults = import ./nix/defaults.nix;

      overlays.default = final: _prev: {
        claude-chroot-activate = final.callPackage ./nix/package.nix { };
        claude-chroot = self.lib.mkSandbox final { };
      };

      packages = forAllSystems (
        pkgs:
        let
          # `<nixpkgs>` inside is the nixpkgs this flake is locked to.
          sandbox = self.lib.mkSandbox pkgs { nixpkgsPath = nixpkgs.outPath; };
        in
        {
          inherit (pkgs) claude-chroot-activate;
          inherit (sandbox) skeleton;
          claude-chroot = sandbox;
          default = sandbox;
        }
      );

      apps = forAllSystems (pkgs: import ./nix/apps.nix { inherit pkgs self; });

      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./modules/claude-chroot.nix ];
          programs.claude-chroot.package = lib.mkDefault (pkgs.callPackage ./nix/package.nix { });
        };

      checks = forAllSystems (pkgs: import ./nix/checks.nix { inherit pkgs self; });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.claude-chroot-activate ];
          packages = [
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.cargo-insta
            pkgs.nixfmt
            pkgs.nftables
            pkgs.passt
            pkgs.jq
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);
    };
}
