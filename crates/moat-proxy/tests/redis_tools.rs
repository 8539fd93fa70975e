//! Redis's own tools through moat: redis-cli (commands, database selection, `--pipe` mass
//! insert) and redis-benchmark (plain and pipelined), in front of a real Redis.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Raw, Stack};

/// Generous bound so a hung proxy fails the test instead of hanging it.
const TOOL_DEADLINE: Duration = Duration::from_secs(300);

/// True when `tool` can be run; prints why the test is skipped otherwise.
fn available(tool: &str) -> bool {
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!("skipping: `{tool} --version` failed: {:?}", out.status);
            false
        }
        Err(e) => {
            eprintln!("skipping: cannot run {tool}: {e}");
            false
        }
    }
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `tool args`, feeding `stdin`, and waits for it (killing it past the deadline).
fn run(tool: &str, args: &[String], stdin: &[u8]) -> Output {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {tool}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tool") {
            break Some(status);
        }
        if started.elapsed() > TOOL_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let Some(status) = status else {
        panic!("{tool} {args:?} ran past the deadline:\n{stdout}\n{stderr}");
    };
    Output {
        success: status.success(),
        stdout,
        stderr,
    }
}

fn cli(stack: &Stack, extra: &[&str], stdin: &[u8]) -> Output {
    let mut args = vec![
        "-h".to_string(),
        "127.0.0.1".to_string(),
        "-p".to_string(),
        stack.addr().port().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    let out = run("redis-cli", &args, stdin);
    assert!(
        out.success,
        "redis-cli {extra:?} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    out
}

/// Lines that report an error (redis-benchmark prints progress lines ended by CR).
fn error_lines(text: &str) -> Vec<&str> {
    text.split(['\r', '\n'])
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            lower.contains("error") || l.contains("ERR") || lower.contains("warning")
        })
        .collect()
}

#[test]
fn redis_cli_commands_and_database_selection() {
    if !available("redis-cli") {
        return;
    }
    let stack = Stack::start();
    assert_eq!(cli(&stack, &["set", "k", "v"], b"").stdout.trim(), "OK");
    assert_eq!(cli(&stack, &["get", "k"], b"").stdout.trim(), "v");
    assert_eq!(cli(&stack, &["ping"], b"").stdout.trim(), "PONG");
    assert_eq!(
        cli(&stack, &["-n", "2", "set", "x", "1"], b"")
            .stdout
            .trim(),
        "OK"
    );
    assert_eq!(
        cli(&stack, &["-n", "2", "get", "x"], b"").stdout.trim(),
        "1"
    );
    assert_eq!(cli(&stack, &["get", "x"], b"").stdout.trim(), "");
    // Checked on Redis directly: k in database 0, x in database 2 only.
    assert_eq!(
        stack.redis.command(&["GET", "k"]).expect("GET"),
        b"$1\r\nv\r\n"
    );
    assert_eq!(stack.redis.command(&["GET", "x"]).expect("GET"), b"$-1\r\n");
    let mut direct = Raw::connect(stack.redis.addr());
    assert_eq!(direct.cmd(&[b"SELECT", b"2"]), b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"x"]), b"$1\r\n1\r\n");
    // Commands read from stdin, one per line, in one session.
    let out = cli(&stack, &["-n", "3"], b"set y 2\nget y\nclient getname\n");
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), ["OK", "2", ""]);
}

#[test]
fn redis_cli_pipe_mass_insert() {
    if !available("redis-cli") {
        return;
    }
    let stack = Stack::start();
    let mut input = Vec::new();
    for i in 0..1000 {
        let key = format!("mass:{i}");
        let value = format!("value-{i}");
        input.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
    }
    let out = cli(&stack, &["--pipe"], &input);
    assert!(
        out.stdout.contains("errors: 0, replies: 1000"),
        "unexpected --pipe summary:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        stack.redis.command(&["DBSIZE"]).expect("DBSIZE"),
        b":1000\r\n"
    );
    assert_eq!(
        stack.redis.command(&["GET", "mass:999"]).expect("GET"),
        b"$9\r\nvalue-999\r\n"
    );
}

fn benchmark(stack: &Stack, pipeline: Option<&str>) {
    let mut args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &stack.addr().port().to_string(),
        "-t",
        "set,get,incr,lpush,lrange",
        "-n",
        "2000",
        "-c",
        "20",
        "-q",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    if let Some(p) = pipeline {
        args.push("-P".into());
        args.push(p.into());
    }
    let out = run("redis-benchmark", &args, b"");
    assert!(
        out.success,
        "redis-benchmark {args:?} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    let errors: Vec<&str> = error_lines(&out.stdout)
        .into_iter()
        .chain(error_lines(&out.stderr))
        .collect();
    assert!(
        errors.is_empty(),
        "redis-benchmark {args:?} reported errors: {errors:#?}"
    );
    for test in [
        "SET:",
        "GET:",
        "INCR:",
        "LPUSH:",
        "LRANGE_100 ",
        "LRANGE_600 ",
    ] {
        assert!(
            out.stdout
                .split(['\r', '\n'])
                .any(|l| l.trim_start().starts_with(test) && l.contains("requests per second")),
            "no {test} result in:\n{}",
            out.stdout
        );
    }
}

#[test]
fn redis_benchmark_through_moat() {
    if !available("redis-benchmark") {
        return;
    }
    let stack = Stack::start();
    benchmark(&stack, None);
    benchmark(&stack, Some("16"));
    // Twenty benchmark clients never meant more than moat's shared pool on Redis.
    let clients = stack.redis_clients();
    assert!(
        clients <= 2,
        "Redis holds {clients} connections besides the INFO one; moat's pool is 2"
    );
    // The data is really there.
    assert_eq!(
        stack
            .redis
            .command(&["EXISTS", "counter:__rand_int__"])
            .expect("EXISTS"),
        b":1\r\n"
    );
}
