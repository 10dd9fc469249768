//! A JDK peer against our server: the Java side of the wire (piece-by-piece writes, Nagle on)
//! and the JDK's own deserialization of our error payload. Needs `javac` and `java` (present
//! on this project's machines); without them the test says so and fails rather than pass.

use std::path::Path;
use std::process::Command;

mod common;
use common::TestServer;

#[test]
fn jdk_client_puts_gets_and_reads_our_error_payload() {
    let have = |tool: &str| Command::new(tool).arg("-version").output().is_ok();
    assert!(
        have("javac") && have("java"),
        "javac/java not found: install a JDK (openjdk-17-jdk-headless) to run the interop test"
    );
    let out_dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/BlobProbe.java");
    let javac = Command::new("javac")
        .arg("-d")
        .arg(out_dir.path())
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        javac.status.success(),
        "{}",
        String::from_utf8_lossy(&javac.stderr)
    );

    let ts = TestServer::start();
    let run = Command::new("java")
        .arg("-cp")
        .arg(out_dir.path())
        .arg("BlobProbe")
        .arg(ts.addr().ip().to_string())
        .arg(ts.addr().port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "put-key ok");
    assert_eq!(lines[1], "get ok");
    assert_eq!(lines[2], "error status=1 class=java.io.IOException");
    assert!(
        lines[3].starts_with("message Server side error: Cannot find required BLOB"),
        "{}",
        lines[3]
    );
    assert_eq!(lines[4], "closed true");
}
