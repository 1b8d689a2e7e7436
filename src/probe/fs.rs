//! Probes on files: host files that must be absent, places that must not be writable,
//! the managed settings.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{Attempt, Finding, HostPath, Plan, io_errno};
pub(super) fn read_host_path(hp: &HostPath) -> Finding {
    let f = Finding::new(
        &hp.id,
        &hp.threat,
        format!("stat and read {}", hp.path.display()),
    );
    if let Some(reason) = &hp.missing {
        return f.skipped(reason.clone());
    }
    match std::fs::metadata(&hp.path) {
        Err(e) => f.held(format!("absent ({})", io_errno(&e))),
        Ok(md) if (md.dev(), md.ino()) != (hp.dev, hp.ino) => {
            f.held("the path exists inside but is not the host's file")
        }
        Ok(md) => {
            let readable = if md.is_dir() {
                std::fs::read_dir(&hp.path).is_ok()
            } else {
                std::fs::File::open(&hp.path).is_ok()
            };
            f.broken(format!(
                "the host's {} is visible inside (readable: {})",
                hp.path.display(),
                if readable { "yes" } else { "no" }
            ))
        }
    }
}

/// Try to create `dir/name`; removes what it created.
fn try_create(dir: &Path, name: &str) -> Attempt {
    let path = dir.join(name);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
            Err(format!("created {}", path.display()))
        }
        Err(e) => Ok(io_errno(&e)),
    }
}

pub(super) fn write_etc(plan: &Plan) -> Finding {
    let name = format!(".ccr-probe-{}", plan.nonce);
    let f = Finding::new("write-etc", "write to /etc", format!("create /etc/{name}"));
    f.judge(&[("/etc".into(), try_create(Path::new("/etc"), &name))])
}

pub(super) fn write_nix_store(plan: &Plan) -> Finding {
    let store = Path::new("/nix/store");
    let name = format!(".ccr-probe-{}", plan.nonce);
    let f = Finding::new(
        "write-nix-store",
        "write to /nix/store",
        format!("create /nix/store/{name}"),
    );
    if !store.is_dir() {
        return f.skipped("this configuration does not mount /nix/store in the sandbox");
    }
    f.judge(&[("/nix/store".into(), try_create(store, &name))])
}

pub(super) fn write_skeleton(plan: &Plan) -> Finding {
    let f = Finding::new(
        "write-skeleton",
        "change the skeleton",
        "open /etc/nsswitch.conf for writing; create a file in the skeleton's store path",
    );
    let open_rw = |p: &Path| -> Attempt {
        match std::fs::OpenOptions::new().append(true).open(p) {
            Ok(_) => Err(format!("opened {} for writing", p.display())),
            Err(e) => Ok(io_errno(&e)),
        }
    };
    let mut attempts = vec![(
        "/etc/nsswitch.conf".to_string(),
        open_rw(Path::new("/etc/nsswitch.conf")),
    )];
    if plan.skeleton.join("etc").is_dir() {
        let name = format!(".ccr-probe-{}", plan.nonce);
        attempts.push((
            plan.skeleton.display().to_string(),
            try_create(&plan.skeleton, &name),
        ));
        attempts.push((
            plan.skeleton
                .join("etc/nsswitch.conf")
                .display()
                .to_string(),
            open_rw(&plan.skeleton.join("etc/nsswitch.conf")),
        ));
    }
    f.judge(&attempts)
}

pub(super) fn settings(plan: &Plan) -> Finding {
    let path = Path::new(crate::settings::INSIDE_PATH);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let f = Finding::new(
        "settings",
        "change the managed settings",
        "write, rename, remove and replace /etc/claude-code/managed-settings.json",
    );
    let Ok(before) = std::fs::read(path) else {
        return f.broken("the managed settings are missing inside");
    };
    let moved = dir.join(format!(".ccr-moved-{}", plan.nonce));
    let fake = dir.join(format!(".ccr-fake-{}", plan.nonce));
    let io = |r: std::io::Result<()>, what: &str| -> Attempt {
        match r {
            Ok(()) => Err(what.to_string()),
            Err(e) => Ok(io_errno(&e)),
        }
    };
    let mut attempts = vec![
        (
            "write".to_string(),
            io(
                std::fs::OpenOptions::new().write(true).open(path).map(drop),
                "opened for writing",
            ),
        ),
        (
            "rename".to_string(),
            io(std::fs::rename(path, &moved), "renamed"),
        ),
    ];
    if moved.exists() {
        let _ = std::fs::rename(&moved, path);
    }
    attempts.push((
        "replace".to_string(),
        io(
            std::fs::write(&fake, b"{}\n").and_then(|_| std::fs::rename(&fake, path)),
            "replaced by another file",
        ),
    ));
    let _ = std::fs::remove_file(&fake);
    let after = std::fs::read(path).unwrap_or_default();
    if after != before {
        attempts.push(("content".into(), Err("the content changed".into())));
    }
    f.judge(&attempts)
}
