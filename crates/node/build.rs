//! Names the build: the commit it was built from, so an administrator can
//! tell which build runs after an upgrade or a rollback (`--version`, the
//! start log, `/readyz`, `/metrics`). "unknown" outside a git checkout.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    let mut commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Built from a tree with changes not committed: said so (two such
    // builds named the same commit as the clean one).
    if commit != "unknown" && git(&["status", "--porcelain", "--untracked-files=no"]).is_some() {
        commit.push_str("-modified");
    }
    println!("cargo:rustc-env=PNEUMO_BUILD_COMMIT={commit}");
    // Built again when HEAD moves (a commit, a checkout) or a source or the
    // index changes (a tree made clean or modified).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for name in ["HEAD", "refs/heads", "packed-refs", "index"] {
            println!("cargo:rerun-if-changed={dir}/{name}");
        }
    }
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for tracked in ["crates", "Cargo.toml", "Cargo.lock"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(tracked).display()
        );
    }
    println!("cargo:rerun-if-changed=build.rs");
}
