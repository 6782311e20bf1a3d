//! The host packaged the way Python and Node.js users install tools
//! (packaging/package.py): a wheel installed with pip into a fresh venv,
//! and an npm package installed with npm, both from local files, each
//! putting the very binary on the PATH it would on a user's machine.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `installed` is the binary the tests run: the same bytes, and it
/// answers as the host and writes a plugin project.
fn is_the_host(installed: &Path, scratch: &Path) {
    let built = env!("CARGO_BIN_EXE_pgevents-host");
    assert!(
        std::fs::read(installed).unwrap() == std::fs::read(built).unwrap(),
        "{} is not the built binary",
        installed.display()
    );
    let version = run(Command::new(installed).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("pgevents-host {}", env!("CARGO_PKG_VERSION"))
    );
    let project = scratch.join(format!(
        "from-{}",
        scratch.file_name().unwrap().to_string_lossy()
    ));
    run(Command::new(installed)
        .args(["new", "packaged", "--lang", "python", "--dir"])
        .arg(&project));
    assert!(
        project.join("pgevents_sdk.py").is_file(),
        "the SDK came with the binary"
    );
}

fn packages(out: &Path) -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/package.py");
    let printed = run(Command::new("python3")
        .arg(script)
        .args(["--binary", env!("CARGO_BIN_EXE_pgevents-host"), "--out"])
        .arg(out));
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "{printed}");
    (lines[0].into(), lines[1].into())
}

#[test]
fn the_host_installs_as_a_wheel_with_pip_and_as_an_npm_package_with_npm() {
    let dir = tempfile::tempdir().unwrap();
    let (wheel, npm_package) = packages(dir.path());
    let wheel_name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        wheel_name.starts_with(&format!(
            "pgevents_host-{}-py3-none-linux_",
            env!("CARGO_PKG_VERSION")
        )),
        "{wheel_name}"
    );

    let venv = dir.path().join("venv");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    run(Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(&wheel));
    let python_scratch = dir.path().join("python");
    std::fs::create_dir(&python_scratch).unwrap();
    is_the_host(&venv.join("bin/pgevents-host"), &python_scratch);
    let shown = run(Command::new(venv.join("bin/pip")).args(["show", "pgevents-host"]));
    assert!(
        shown.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{shown}"
    );

    let app = dir.path().join("node-app");
    std::fs::create_dir(&app).unwrap();
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--offline",
            "--prefix",
        ])
        .arg(&app)
        .arg(&npm_package));
    is_the_host(&app.join("node_modules/.bin/pgevents-host"), &app);
}
