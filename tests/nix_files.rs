//! The Nix half, checked without nixpkgs: every `.nix` file parses, the pure renderer
//! (`nix/render.nix`) produces the skeleton files and an `activate.json` this crate accepts,
//! and it refuses arguments it does not know. Needs `nix-instantiate` on PATH.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use claude_chroot::config::Config;
use common::nix_instantiate;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Arguments a test passes to render.nix, as a Nix attribute set.
const TEST_ARGS: &str = r#"{
  skeleton = "/tmp/claude-chroot-test/skeleton";
  stateDir = "/tmp/claude-chroot-test/state";
  user = { name = "claude"; uid = 1000; gid = 1000; home = "/home/claude"; };
  tools = { shell = "/bin/bash"; nft = "/usr/sbin/nft"; pasta = "/usr/bin/pasta"; };
  path = "/usr/local/bin:/usr/bin:/bin";
  extraMounts = [ { source = "/usr"; target = "/usr"; } { source = "/lib64"; target = "/lib64"; optional = true; } ];
  passEnv = [ "EDITOR" ];
  environment = { CLAUDE_CHROOT_QUIET = "1"; };
  network = { nameservers = [ "127.0.0.53" ]; };
  nixpkgsPath = "/nix/store/00000000000000000000000000000000-nixpkgs-source";
}"#;

/// Evaluate render.nix with `args` (a Nix expression) and return its JSON result.
fn render(args: &str) -> Result<Value, String> {
    let render = repo().join("nix/render.nix");
    let expr = format!("import {} ({args})", render.display());
    let out = nix_instantiate(&["--eval", "--strict", "--json", "--expr", &expr]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("nix-instantiate printed invalid JSON"))
}

fn rendered() -> Value {
    render(TEST_ARGS).unwrap_or_else(|e| panic!("render.nix failed with the test arguments:\n{e}"))
}

fn render_error(extra: &str) -> String {
    match render(&format!("{TEST_ARGS} // {extra}")) {
        Ok(_) => panic!("render.nix accepted {extra}"),
        Err(e) => e,
    }
}

fn tracked_nix_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--", "*.nix"])
        .current_dir(repo())
        .output()
        .expect("cannot run git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    out.stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| repo().join(String::from_utf8_lossy(p).as_ref()))
        .collect()
}

#[test]
fn every_tracked_nix_file_parses() {
    let files = tracked_nix_files();
    for expected in ["flake.nix", "nix/render.nix", "modules/claude-chroot.nix"] {
        assert!(
            files.iter().any(|f| f.ends_with(expected)),
            "{expected} is not tracked; found {files:?}"
        );
    }
    for file in &files {
        let out = nix_instantiate(&["--parse", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{} does not parse:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn rendered_skeleton_files_match_snapshots() {
    let files = rendered()["files"].as_object().unwrap().clone();
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "etc/claude-code/managed-settings.json",
            "etc/group",
            "etc/host.conf",
            "etc/hosts",
            "etc/nix/nix.conf",
            "etc/nix/registry.json",
            "etc/nsswitch.conf",
            "etc/passwd",
            "home/.bashrc",
            "home/shell.nix",
        ]
    );
    for (name, content) in &files {
        let snapshot = name.replace(['/', '.'], "_");
        insta::assert_snapshot!(snapshot, content.as_str().unwrap());
    }
}

#[test]
fn rendered_activate_json_matches_snapshot() {
    insta::assert_json_snapshot!("activate", rendered()["activate"]);
}

#[test]
fn rendered_activate_json_is_accepted_by_the_activator() {
    let activate = rendered()["activate"].to_string();
    let config = Config::parse(&activate).unwrap_or_else(|e| {
        panic!("the activator rejects what render.nix writes: {e:#}\n{activate}")
    });
    assert_eq!(
        config.skeleton,
        Path::new("/tmp/claude-chroot-test/skeleton")
    );
    assert_eq!(config.user.uid, Some(1000));
    assert_eq!(
        config.managed_settings.default,
        Path::new("/tmp/claude-chroot-test/skeleton/etc/claude-code/managed-settings.json")
    );
    assert!(
        config
            .environment
            .pass
            .iter()
            .any(|v| v == "ANTHROPIC_API_KEY")
    );
    assert!(config.environment.pass.iter().any(|v| v == "EDITOR"));
    assert_eq!(config.environment.set["NIX_REMOTE"], "daemon");
    // The store, the daemon socket's directory (optional), and the test's extra mount.
    assert_eq!(config.mounts.len(), 3 + 1);
    assert_eq!(config.mounts[0].target, Path::new("/nix/store"));
    assert!(config.mounts[1].optional);
    assert!(config.mounts[3].optional);
}

#[test]
fn minimal_arguments_render_an_accepted_config() {
    let value = render(
        r#"{ skeleton = "/s"; tools = { shell = "/bin/sh"; nft = "/n"; pasta = "/p"; }; path = "/bin"; }"#,
    )
    .unwrap();
    let config = Config::parse(&value["activate"].to_string()).unwrap();
    assert_eq!(config.state_dir, Path::new("/srv/claude-chroot"));
    assert_eq!(config.user.uid, None);
    assert_eq!(config.network.tcp_ports, [443]);
    assert!(!config.environment.set.contains_key("NIX_PATH"));
    let passwd = value["files"]["etc/passwd"].as_str().unwrap();
    assert!(passwd.contains("claude:x:1000:1000:"), "{passwd}");
}

#[test]
fn default_managed_settings_deny_network_and_installs() {
    let files = rendered()["files"].clone();
    let text = files["etc/claude-code/managed-settings.json"]
        .as_str()
        .unwrap();
    let settings: Value = serde_json::from_str(text).expect("managed settings are not valid JSON");
    let deny: Vec<&str> = settings["permissions"]["deny"]
        .as_array()
        .expect("permissions.deny is not a list")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for rule in [
        "WebSearch",
        "WebFetch",
        "Bash(curl *)",
        "Bash(wget *)",
        "Bash(nc *)",
        "Bash(ssh *)",
        "Bash(scp *)",
        "Bash(rsync *)",
        "Bash(socat *)",
        "Bash(git clone *)",
        "Bash(git fetch)",
        "Bash(git pull *)",
        "Bash(git push *)",
        "Bash(git remote add *)",
        "Bash(npm install *)",
        "Bash(npm ci)",
        "Bash(pip install *)",
        "Bash(uv pip install *)",
        "Bash(cargo install *)",
        "Bash(go get *)",
        "Bash(apt-get *)",
        "Bash(nix profile install *)",
        "Bash(docker pull *)",
        "Bash(podman run *)",
    ] {
        assert!(deny.contains(&rule), "{rule} is not denied: {deny:?}");
    }
    for rule in &deny {
        let ok = matches!(*rule, "WebSearch" | "WebFetch")
            || (rule.starts_with("Bash(") && rule.ends_with(')') && !rule.contains(":*"));
        assert!(ok, "{rule} is not a Claude Code permission rule");
    }
}

#[test]
fn custom_managed_settings_replace_the_default() {
    let value = render(&format!(
        r#"{TEST_ARGS} // {{ managedSettings = {{ permissions.deny = [ "WebFetch" ]; }}; }}"#
    ))
    .unwrap();
    let text = value["files"]["etc/claude-code/managed-settings.json"]
        .as_str()
        .unwrap();
    let settings: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        settings,
        serde_json::json!({ "permissions": { "deny": ["WebFetch"] } })
    );
}

#[test]
fn unknown_argument_is_rejected() {
    let err = render_error("{ allowedDomains = [ \"example.org\" ]; }");
    assert!(
        err.contains("unexpected argument 'allowedDomains'"),
        "{err}"
    );
    let err = render_error("{ network = { domain = [ ]; }; }");
    assert!(
        err.contains("unknown network attribute(s): domain"),
        "{err}"
    );
    let err = render_error("{ user = { uid = 1000; shell = \"/bin/sh\"; }; }");
    assert!(err.contains("unknown user attribute(s): shell"), "{err}");
}

#[test]
fn wrong_types_and_values_are_rejected_with_a_message() {
    for (extra, message) in [
        ("{ quarantine = \"yes\"; }", "quarantine must be a boolean"),
        (
            "{ stateDir = \"srv\"; }",
            "stateDir must be an absolute path",
        ),
        ("{ user = { uid = 0; }; }", "user.uid must be positive"),
        ("{ user = { name = \"a b\"; }; }", "user.name \"a b\""),
        (
            "{ network = { tcpPorts = [ 0 ]; }; }",
            "port number 1-65535",
        ),
        (
            "{ network = { mode = \"open\"; }; }",
            "network.mode must be",
        ),
        (
            "{ network = { domains = [ ]; }; }",
            "network.domains is empty",
        ),
        (
            "{ passEnv = [ \"LD_PRELOAD\" ]; }",
            "LD_PRELOAD may not be passed",
        ),
        (
            "{ passEnv = [ \"BASH_ENV\" ]; }",
            "BASH_ENV may not be passed",
        ),
        ("{ protectedPaths = [ \"../x\" ]; }", "must not contain .."),
        (
            "{ protectedPaths = [ \"/etc\" ]; }",
            "must be a relative path",
        ),
        (
            "{ managedSettings = [ ]; }",
            "managedSettings must be an attribute set",
        ),
        (
            "{ extraMounts = [ { source = \"/a\"; } ]; }",
            "extraMounts element.target",
        ),
        (
            "{ limits = { pids = 2; }; }",
            "limits.pids must be an integer of at least 8",
        ),
        (
            "{ limits = { pid = 64; }; }",
            "unknown limits attribute(s): pid",
        ),
    ] {
        let err = render_error(extra);
        assert!(
            err.contains(message),
            "{extra}: expected {message:?} in:\n{err}"
        );
    }
}

#[test]
fn flake_lock_pins_nixpkgs_25_11() {
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("flake.lock")).unwrap()).unwrap();
    assert_eq!(lock["version"], 7);
    let locked = &lock["nodes"]["nixpkgs"]["locked"];
    assert_eq!(locked["rev"], "8fd9daa3db09ced9700431c5b7ad0e8ba199b575");
    assert_eq!(
        locked["narHash"],
        "sha256-Ti+ZBvW6yrWWAg2szExVTwCd4qOJ3KlVr1tFHfyfi8Q="
    );
    assert_eq!(lock["nodes"]["nixpkgs"]["original"]["ref"], "nixos-25.11");
}

/// The NixOS module under nixpkgs' real module system. nixpkgs' `lib` is not vendored and
/// cannot be downloaded in CI: point `NIXPKGS_LIB` at a checkout of it (the `lib` directory
/// of nixpkgs or of nixpkgs.lib) and run `cargo test --test nix_files -- --ignored`.
#[test]
#[ignore = "needs NIXPKGS_LIB, a checkout of nixpkgs' lib"]
fn nixos_module_evaluates_with_nixpkgs_lib() {
    let lib = std::env::var_os("NIXPKGS_LIB")
        .expect("set NIXPKGS_LIB to a nixpkgs lib directory to evaluate the module");
    let lib = PathBuf::from(lib);
    assert!(
        lib.join("default.nix").is_file(),
        "NIXPKGS_LIB={} has no default.nix",
        lib.display()
    );
    let out = nix_instantiate(&[
        "--eval",
        "--strict",
        "--json",
        repo().join("tests/nixos/module-eval.nix").to_str().unwrap(),
        "--arg",
        "nixpkgsLib",
        lib.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "module evaluation failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["default"]["failedAssertions"], serde_json::json!([]));
    assert_eq!(result["impossible"].as_array().unwrap().len(), 4);
    assert_eq!(result["extended"], "extended");
    assert_eq!(result["sudo"].as_array().unwrap().len(), 2);
    // What the module writes is also what the activator accepts, but for store paths.
    for case in ["default", "full"] {
        let activate = result[case]["activate"].to_string();
        Config::parse(&activate)
            .unwrap_or_else(|e| panic!("{case}: the activator rejects the module's config: {e:#}"));
    }
}

/// The default package's activate.json, rendered as nix/sandbox.nix does it, with
/// stand-in store paths for what nixpkgs would build.
fn default_package_activate() -> Value {
    let store = "/nix/store/00000000000000000000000000000000";
    let expr = format!(
        r#"import {repo}/nix/render.nix (import {repo}/nix/sandbox-args.nix {{
             skeleton = "{store}-claude-chroot-skeleton";
             shell = "{store}-bash-interactive/bin/bash";
             nft = "{store}-nftables/bin/nft";
             pasta = "{store}-passt/bin/pasta";
             toolsBin = "{store}-claude-chroot-tools/bin";
             nixpkgsPath = "{store}-source";
           }} {{ }})"#,
        repo = repo().display()
    );
    common::nix_eval(&expr)["activate"].clone()
}

/// Drop what is a path on this machine: the store in the flake, temporary directories and
/// host binds in the integration tests.
fn without_paths(mut v: Value) -> Value {
    for key in ["skeleton", "stateDir", "tools", "mounts"] {
        v.as_object_mut().unwrap().remove(key);
    }
    v["managedSettings"]
        .as_object_mut()
        .unwrap()
        .remove("default");
    let set = v["environment"]["set"].as_object_mut().unwrap();
    set.remove("PATH");
    set.remove("NIX_PATH");
    // Set exactly when /nix is mounted, which the fixture replaces by host binds.
    set.remove("NIX_REMOTE");
    v
}

#[test]
fn default_package_config_differs_from_the_tested_one_only_in_paths() {
    let default = default_package_activate();
    Config::parse(&default.to_string())
        .expect("the activator accepts the default package's config");
    let tested = common::Fixture::new().activate.clone();
    assert_eq!(
        without_paths(default.clone()),
        without_paths(tested.clone())
    );
    // And the paths are what the fixture stands in for: the store and the daemon socket,
    // and PATH into the tool environment.
    assert_eq!(
        default["mounts"],
        serde_json::json!([
            { "source": "/nix/store", "target": "/nix/store", "writable": false, "optional": false },
            {
                "source": "/nix/var/nix/daemon-socket",
                "target": "/nix/var/nix/daemon-socket",
                "writable": false,
                "optional": true
            }
        ])
    );
    assert!(
        default["environment"]["set"]["PATH"]
            .as_str()
            .unwrap()
            .ends_with("-claude-chroot-tools/bin")
    );
    assert_eq!(default["stateDir"], "/srv/claude-chroot");
    assert_eq!(default["environment"]["set"]["NIX_REMOTE"], "daemon");
}

/// The `checkFlags` of nix/package.nix, evaluated with a stand-in for nixpkgs' `lib` and
/// `rustPlatform` that only hands the builder's arguments back.
fn package_check_flags() -> Vec<String> {
    let expr = format!(
        r#"(import {} {{
          lib = {{
            importTOML = p: builtins.fromTOML (builtins.readFile p);
            fileset = {{ toSource = x: x; unions = x: x; }};
            licenses.mit = "mit";
            platforms.linux = [ ];
          }};
          rustPlatform.buildRustPackage = args: args;
        }}).checkFlags"#,
        repo().join("nix/package.nix").display()
    );
    let out = nix_instantiate(&["--eval", "--strict", "--json", "--expr", &expr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The newest unit-test binary of the library that cargo built for this run.
fn library_test_binary() -> PathBuf {
    let deps = Path::new(env!("CARGO_BIN_EXE_claude-chroot-activate"))
        .parent()
        .unwrap()
        .join("deps");
    std::fs::read_dir(&deps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("claude_chroot-") && !name.contains('.')
        })
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .expect("the library's unit tests are built (cargo test --all-targets)")
}

/// The package build runs the library's unit tests as an unprivileged build user, with
/// the package's `checkFlags`: they must pass there, or `nix build` fails. Run them the
/// same way here, as nobody, from a copy nobody can read.
#[test]
fn unit_tests_pass_unprivileged_as_in_the_package_build() {
    let flags = package_check_flags();
    assert!(!flags.is_empty(), "nix/package.nix skips nothing");
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("unit-tests");
    std::fs::copy(library_test_binary(), &binary).unwrap();
    for p in [dir.path(), binary.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(&flags)
        .env_clear()
        .env("HOME", dir.path())
        .env("PATH", "/usr/bin:/bin")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "unit tests fail for an unprivileged user with {flags:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only what the flags name was skipped: every other unit test ran.
    let listed = Command::new(&binary)
        .args(["--list", "--format=terse"])
        .output()
        .unwrap();
    let total = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.ends_with(": test"))
        .count();
    assert!(
        stdout.contains(&format!("{} passed; 0 failed", total - flags.len())),
        "{stdout}"
    );
}
