//! Privileged tests: load the real probe into the running kernel and push real TCP over loopback
//! inside a fresh network namespace per test; every byte count is asserted exactly.
//!
//! `TRAFFICMAP_TEST_BACKEND=auto|fexit|kprobe|tracepoint|counters` selects the backend (default auto);
//! `cargo xtask vm-test` runs this binary once per backend in VMs of several kernels.

mod support;

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::Duration,
};

use support::*;
use trafficmap_common::{AF_INET, AF_INET6, Conn, flags, role, tcp_state};
use trafficmap_daemon::{
    backend::{AttachMode, Backend},
    conn::{ConnExt as _, ConnId, Role, RoleSource},
    probe::{Probe, ProbeError},
    roles::{self, ListenerCache},
};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `data` with plain `write(2)` calls of the given chunk sizes (cycled); returns the
/// number of calls that moved bytes.
fn write_chunks(s: &mut TcpStream, data: &[u8], chunks: &[usize]) -> u64 {
    let (mut off, mut calls, mut i) = (0, 0, 0);
    while off < data.len() {
        let end = (off + chunks[i % chunks.len()]).min(data.len());
        let n = s.write(&data[off..end]).expect("write");
        assert!(n > 0);
        off += n;
        calls += 1;
        i += 1;
    }
    calls
}

/// Reads to EOF with `read(2)` into a buffer of `buf` bytes; returns (data, calls that moved bytes).
fn read_all(s: &mut TcpStream, buf: usize) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let mut b = vec![0u8; buf];
    let mut calls = 0;
    loop {
        let n = s.read(&mut b).expect("read");
        if n == 0 {
            return (out, calls);
        }
        out.extend_from_slice(&b[..n]);
        calls += 1;
    }
}

fn named<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::Builder::new().name(name.into()).spawn(f).unwrap()
}

/// This process's name: the thread-group leader's `comm` (`/proc/self` is the leader), which
/// every backend reports whatever thread moved the bytes.
fn process_name() -> String {
    let name = std::fs::read_to_string("/proc/self/comm").unwrap();
    let name = name.trim_end_matches('\n').to_owned();
    assert!(!name.is_empty() && !name.starts_with("tm-"), "{name}");
    name
}

/// Calls the probe counts: the per-call backends count every send and receive that moved
/// bytes; the counters backend has no per-call hook and counts none.
fn calls(probe: &Probe, n: u64) -> u64 {
    if probe.backend() == Backend::Counters {
        0
    } else {
        n
    }
}

fn port(a: SocketAddr) -> u16 {
    a.port()
}

/// Decides whether the backend under test loads here. Prints a marker line the VM harness reads;
/// when the backend is unsupported, asserts that `auto` falls back past it.
#[test]
fn backend_support() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let mode = mode_under_test();
    let opts = trafficmap_daemon::probe::ProbeOptions {
        attach: mode,
        netns: trafficmap_daemon::probe::NetnsScope::Path(ns.path()),
        classic_tracepoints: classic_tracepoints(),
        ..Default::default()
    };
    match Probe::load(&opts) {
        Ok(probe) => {
            println!("TRAFFICMAP_SUPPORT {} supported", probe.backend());
            println!("TRAFFICMAP_TRACEPOINTS {:?}", probe.tracepoint_kind());
            for (b, why) in probe.selection().skipped() {
                println!("TRAFFICMAP_SKIPPED {b}: {why}");
            }
            if let AttachMode::Force(b) = mode {
                assert_eq!(probe.backend(), b);
            }
        }
        Err(ProbeError::Backend(trafficmap_daemon::backend::SelectError::ForcedUnavailable {
            backend,
            reason,
        })) => {
            println!("TRAFFICMAP_SUPPORT {backend} unsupported: {reason}");
            // The automatic choice must skip it, saying why, and land on a later backend.
            let auto = load_with(&ns, AttachMode::Auto);
            let chosen = auto.backend();
            assert_ne!(chosen, backend);
            if Backend::AUTO_ORDER.iter().position(|&b| b == backend)
                < Backend::AUTO_ORDER.iter().position(|&b| b == chosen)
            {
                let skipped: Vec<Backend> = auto.selection().skipped().map(|(b, _)| b).collect();
                assert!(skipped.contains(&backend), "{skipped:?}");
            }
            println!("TRAFFICMAP_FALLBACK {chosen}");
        }
        Err(e) => panic!("probe failed to load for a reason other than backend support: {e}"),
    }
}

#[test]
fn ipv4_write_read_exact_on_both_ends() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let mut probe = load(&ns);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let request = pattern(1_000_003, 1);
    let reply = pattern(300_007, 2);

    let reply2 = reply.clone();
    let server = named("tm-server", move || {
        let (mut s, peer) = listener.accept().unwrap();
        // Small reads: 7 bytes at a time.
        let (got, reads) = read_all(&mut s, 7);
        let writes = write_chunks(&mut s, &reply2, &[65536]);
        (got, reads, writes, peer)
    });
    let mut c = TcpStream::connect(server_addr).unwrap();
    let client_addr = c.local_addr().unwrap();
    let writes = write_chunks(&mut c, &request, &[1, 1000, 65536, 3]);
    c.shutdown(Shutdown::Write).unwrap();
    // Large reads: 1 MiB buffer.
    let (got, reads) = read_all(&mut c, 1 << 20);
    let (server_got, server_reads, server_writes, peer) = server.join().unwrap();
    assert_eq!(got, reply);
    assert_eq!(server_got, request);
    assert_eq!(peer, client_addr);

    let conns = collect(&mut probe);
    let cl = find(&conns, port(client_addr), port(server_addr));
    let sv = find(&conns, port(server_addr), port(client_addr));
    assert_eq!(
        (
            cl.bytes_sent,
            cl.bytes_received,
            cl.send_calls,
            cl.recv_calls
        ),
        (
            request.len() as u64,
            reply.len() as u64,
            calls(&probe, writes),
            calls(&probe, reads)
        )
    );
    assert_eq!(
        (
            sv.bytes_sent,
            sv.bytes_received,
            sv.send_calls,
            sv.recv_calls
        ),
        (
            reply.len() as u64,
            request.len() as u64,
            calls(&probe, server_writes),
            calls(&probe, server_reads)
        )
    );
    assert_eq!(cl.role(), Role::Client);
    assert_eq!(sv.role(), Role::Server);
    assert_eq!(cl.local(), client_addr);
    assert_eq!(cl.remote(), server_addr);
    assert_eq!(sv.local(), server_addr);
    assert_eq!(sv.remote(), client_addr);
    assert_eq!((cl.family, sv.family), (AF_INET, AF_INET));
    let pid = std::process::id();
    assert_eq!((cl.pid, sv.pid), (pid, pid));
    // The client ran on the test's own thread (named after the test), the server on a thread
    // named `tm-server`: both ends are named after the process, the thread-group leader.
    let own_comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    assert_ne!(own_comm.trim(), process_name());
    assert_ne!("tm-server", process_name());
    assert_eq!(cl.process(), process_name());
    assert_eq!(sv.process(), process_name());
    assert_eq!((cl.netns, sv.netns), (inode(&ns), inode(&ns)));
    for c in [&cl, &sv] {
        assert!(c.flags & flags::ESTABLISHED != 0);
        assert!(c.flags & flags::PREEXISTING == 0);
        assert!(c.opened_ns > 0 && c.opened_ns <= c.last_ns, "{c:?}");
    }
    assert_no_errors(&probe);

    // After both ends close, each socket's final record reaches userspace and leaves the table.
    drop(c);
    let mut seen: HashMap<ConnId, Conn> = conns;
    let finals = wait_for(Duration::from_secs(30), || {
        seen.extend(collect(&mut probe));
        let done = [cl.id(), sv.id()]
            .iter()
            .all(|id| seen.get(id).is_some_and(|c| c.is_destroyed()));
        done.then(|| (seen[&cl.id()], seen[&sv.id()]))
    })
    .expect("final records of both ends within 10 s");
    for (f, before) in [(finals.0, cl), (finals.1, sv)] {
        assert_eq!(
            (f.bytes_sent, f.bytes_received),
            (before.bytes_sent, before.bytes_received)
        );
        assert_eq!(f.state, tcp_state::CLOSE);
        // Not `closed_ns >= last_ns`: after shutdown(SHUT_WR) the socket can reach CLOSE while
        // data is still queued, and the application reads it afterwards.
        assert!(f.closed_ns >= f.opened_ns && f.opened_ns > 0, "{f:?}");
    }
    let mut live = Vec::new();
    probe.read_live(&mut live).unwrap();
    assert!(live.iter().all(|c| c.id() != cl.id() && c.id() != sv.id()));
}

#[test]
fn ipv6_send_recv_sendmsg_recvmsg_exact() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let mut probe = load(&ns);
    let listener = TcpListener::bind("[::1]:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let a = pattern(70_001, 3);
    let b = pattern(5_003, 4);
    let total = (a.len() + b.len()) as u64;

    let server = named("tm-recv", move || {
        let (s, _) = listener.accept().unwrap();
        let fd = s.as_raw_fd();
        let mut got = 0usize;
        let mut buf = vec![0u8; 4096];
        // Alternate recv(2) and recvmsg(2) with two iovecs.
        let mut use_msg = false;
        loop {
            let n = if use_msg {
                let (left, right) = buf.split_at_mut(1000);
                let mut iov = [
                    libc::iovec {
                        iov_base: left.as_mut_ptr().cast(),
                        iov_len: left.len(),
                    },
                    libc::iovec {
                        iov_base: right.as_mut_ptr().cast(),
                        iov_len: right.len(),
                    },
                ];
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = 2;
                unsafe { libc::recvmsg(fd, &mut msg, 0) }
            } else {
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), 333, 0) }
            };
            assert!(n >= 0, "{}", std::io::Error::last_os_error());
            if n == 0 {
                break;
            }
            got += n as usize;
            use_msg = !use_msg;
        }
        let reply = b"ok-ipv6";
        assert_eq!(
            unsafe { libc::send(fd, reply.as_ptr().cast(), reply.len(), 0) },
            7
        );
        got
    });
    let c = TcpStream::connect(server_addr).unwrap();
    let client_addr = c.local_addr().unwrap();
    let fd = c.as_raw_fd();
    // send(2) for `a`, sendmsg(2) with two iovecs for `b` split in two.
    let mut off = 0;
    while off < a.len() {
        let n = unsafe { libc::send(fd, a[off..].as_ptr().cast(), (a.len() - off).min(8192), 0) };
        assert!(n > 0);
        off += n as usize;
    }
    let (b1, b2) = b.split_at(2000);
    let iov = [
        libc::iovec {
            iov_base: b1.as_ptr() as *mut _,
            iov_len: b1.len(),
        },
        libc::iovec {
            iov_base: b2.as_ptr() as *mut _,
            iov_len: b2.len(),
        },
    ];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut _;
    msg.msg_iovlen = 2;
    assert_eq!(unsafe { libc::sendmsg(fd, &msg, 0) }, b.len() as isize);
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    (&c).read_to_end(&mut reply).unwrap();
    assert_eq!(server.join().unwrap() as u64, total);

    let conns = collect(&mut probe);
    let cl = find(&conns, port(client_addr), port(server_addr));
    let sv = find(&conns, port(server_addr), port(client_addr));
    assert_eq!((cl.bytes_sent, cl.bytes_received), (total, 7));
    assert_eq!((sv.bytes_sent, sv.bytes_received), (7, total));
    assert_eq!((cl.family, sv.family), (AF_INET6, AF_INET6));
    assert_eq!(cl.local(), client_addr);
    assert_eq!(sv.remote(), client_addr);
    assert!(!cl.is_v4_mapped());
    assert_eq!(sv.process(), process_name());
    assert_no_errors(&probe);
}

#[test]
fn ipv4_mapped_peer_on_dual_stack_listener() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let mut probe = load(&ns);
    let listener = TcpListener::bind("[::]:0").unwrap();
    let p = listener.local_addr().unwrap().port();
    let server = named("tm-dual", move || {
        let (mut s, _) = listener.accept().unwrap();
        read_all(&mut s, 4096).0.len()
    });
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    let client_addr = c.local_addr().unwrap();
    c.write_all(&pattern(12_345, 5)).unwrap();
    drop(c);
    assert_eq!(server.join().unwrap(), 12_345);
    let conns = collect(&mut probe);
    let sv = find(&conns, p, client_addr.port());
    let cl = find(&conns, client_addr.port(), p);
    assert_eq!(sv.family, AF_INET6);
    assert!(sv.is_v4_mapped());
    // Mapped addresses decode to IPv4, so both ends name the same addresses.
    assert_eq!(sv.remote(), client_addr);
    assert_eq!(sv.local(), SocketAddr::from(([127, 0, 0, 1], p)));
    assert_eq!(cl.family, AF_INET);
    assert_eq!((sv.bytes_received, cl.bytes_sent), (12_345, 12_345));
}

#[test]
fn sendfile_is_counted() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let mut probe = load(&ns);
    let data = pattern(2_500_001, 6);
    let path = std::env::temp_dir().join(format!("trafficmap-sendfile-{}", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = named("tm-sink", move || {
        let (mut s, _) = listener.accept().unwrap();
        read_all(&mut s, 1 << 16).0
    });
    let c = TcpStream::connect(server_addr).unwrap();
    let client_addr = c.local_addr().unwrap();
    let mut offset: libc::off_t = 0;
    while (offset as usize) < data.len() {
        let n = unsafe {
            libc::sendfile(
                c.as_raw_fd(),
                file.as_raw_fd(),
                &mut offset,
                data.len() - offset as usize,
            )
        };
        assert!(n > 0, "sendfile: {}", std::io::Error::last_os_error());
    }
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), data);
    let conns = collect(&mut probe);
    let cl = find(&conns, port(client_addr), port(server_addr));
    let sv = find(&conns, port(server_addr), port(client_addr));
    assert_eq!(cl.bytes_sent, data.len() as u64);
    assert_eq!(sv.bytes_received, data.len() as u64);
    assert_no_errors(&probe);
}

#[test]
fn msg_peek_is_not_counted() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let mut probe = load(&ns);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = named("tm-peek", move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 64];
        // Wait for the data, peek at it twice, then read it for real.
        let n = unsafe {
            libc::recv(
                s.as_raw_fd(),
                b.as_mut_ptr().cast(),
                64,
                libc::MSG_PEEK | libc::MSG_WAITALL,
            )
        };
        assert_eq!(n, 64);
        let n = unsafe { libc::recv(s.as_raw_fd(), b.as_mut_ptr().cast(), 10, libc::MSG_PEEK) };
        assert_eq!(n, 10);
        read_all(&mut s, 1000)
    });
    let mut c = TcpStream::connect(server_addr).unwrap();
    let client_addr = c.local_addr().unwrap();
    c.write_all(&pattern(5000, 7)).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, reads) = server.join().unwrap();
    assert_eq!(got.len(), 5000);
    let sv = find(&collect(&mut probe), port(server_addr), port(client_addr));
    assert_eq!(
        (sv.bytes_received, sv.recv_calls),
        (5000, calls(&probe, reads))
    );
}

#[test]
fn eight_threads_on_distinct_sockets_at_once() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let mut probe = load(&ns);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let acceptor = named("tm-accept", move || {
        let mut handles = Vec::new();
        for _ in 0..8 {
            let (mut s, peer) = listener.accept().unwrap();
            handles.push(named("tm-worker", move || {
                // Renamed once more the way C servers do it: the process name must win anyway.
                assert_eq!(
                    unsafe { libc::prctl(libc::PR_SET_NAME, c"tm-renamed".as_ptr()) },
                    0
                );
                let (got, _) = read_all(&mut s, 1500);
                s.write_all(&got[..got.len() / 3]).unwrap();
                (peer, got.len())
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let barrier = barrier.clone();
            named(&format!("tm-client-{i}"), move || {
                let size = 200_003 * (i + 1) + i;
                let mut c = TcpStream::connect(server_addr).unwrap();
                let local = c.local_addr().unwrap();
                barrier.wait();
                c.write_all(&pattern(size, i as u8)).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                let (back, _) = read_all(&mut c, 8192);
                assert_eq!(back.len(), size / 3);
                (local, size)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let served = acceptor.join().unwrap();
    assert_eq!(served.len(), 8);
    let conns = collect(&mut probe);
    for (i, (local, size)) in clients.iter().enumerate() {
        let cl = find(&conns, local.port(), server_addr.port());
        let sv = find(&conns, server_addr.port(), local.port());
        let size = *size as u64;
        assert_eq!(
            (cl.bytes_sent, cl.bytes_received),
            (size, size / 3),
            "client {i}"
        );
        assert_eq!(
            (sv.bytes_received, sv.bytes_sent),
            (size, size / 3),
            "server {i}"
        );
        // Threads named `tm-client-<i>`, `tm-worker` then `tm-renamed`: the process is named.
        assert_eq!(cl.process(), process_name(), "client {i}");
        assert_eq!(sv.process(), process_name(), "server {i}");
    }
    assert_no_errors(&probe);
}

#[test]
fn thousand_connections_between_two_reads() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let mut probe = load(&ns);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    const N: usize = 1000;
    // First read: nothing of this test exists yet.
    assert!(collect(&mut probe).is_empty());

    let server = named("tm-1k-server", move || {
        for _ in 0..N {
            let (mut s, _) = listener.accept().unwrap();
            let (got, _) = read_all(&mut s, 4096);
            s.write_all(&got[..got.len() / 2]).unwrap();
        }
    });
    let mut expected: Vec<u64> = Vec::new();
    for i in 0..N {
        let size = 1 + (i * 37) % 3000;
        let mut c = TcpStream::connect(server_addr).unwrap();
        expected.push(size as u64);
        c.write_all(&pattern(size, i as u8)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let (back, _) = read_all(&mut c, 4096);
        assert_eq!(back.len(), size / 2);
    }
    server.join().unwrap();
    expected.sort_unstable();

    // Second read: every connection is there, live or as a final record, with exact bytes.
    // Ephemeral ports can repeat (loopback reuses TIME_WAIT ports), so connections are told
    // apart by identity and matched by their byte counts as a multiset.
    let sp = server_addr.port();
    let check = |seen: &HashMap<ConnId, Conn>| {
        let mut clients: Vec<(u64, u64)> = seen
            .values()
            .filter(|c| c.dport == sp)
            .map(|c| {
                assert_eq!(c.role(), Role::Client);
                (c.bytes_sent, c.bytes_received)
            })
            .collect();
        // Under load the kernel may create a child socket and drop it when the accept queue
        // is full (the client's retransmitted ACK then creates another): such half-open
        // children never establish and move nothing.
        let (half_open, established): (Vec<&Conn>, Vec<&Conn>) = seen
            .values()
            .filter(|c| c.sport == sp)
            .partition(|c| c.flags & flags::ESTABLISHED == 0);
        assert!(
            half_open
                .iter()
                .all(|c| c.bytes_sent + c.bytes_received == 0),
            "{half_open:?}"
        );
        let mut servers: Vec<(u64, u64)> = established
            .into_iter()
            .map(|c| {
                assert_eq!(c.role(), Role::Server);
                (c.bytes_received, c.bytes_sent)
            })
            .collect();
        clients.sort_unstable();
        servers.sort_unstable();
        let want: Vec<(u64, u64)> = expected.iter().map(|&s| (s, s / 2)).collect();
        assert_eq!(clients, want, "client ends");
        assert_eq!(servers, want, "server ends");
        assert_eq!(seen.len(), 2 * N + half_open.len());
    };
    let mut seen = collect(&mut probe);
    check(&seen);
    // All 2,000 sockets are destroyed soon after; each final record is handed over exactly.
    let all_final = wait_for(Duration::from_secs(90), || {
        for (id, c) in collect(&mut probe) {
            seen.insert(id, c);
        }
        seen.values().all(|c| c.is_destroyed()).then_some(())
    });
    assert!(
        all_final.is_some(),
        "{} of {} connections not destroyed",
        seen.values().filter(|c| !c.is_destroyed()).count(),
        seen.len()
    );
    check(&seen);
    let mut live = Vec::new();
    probe.read_live(&mut live).unwrap();
    assert!(
        live.is_empty(),
        "{} entries left in the live table",
        live.len()
    );
    assert_no_errors(&probe);
}

#[test]
fn connection_open_before_load_is_counted_from_load_time() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let mut c = TcpStream::connect(server_addr).unwrap();
    let client_addr = c.local_addr().unwrap();
    let (mut s, _) = listener.accept().unwrap();
    // Before the probe: 1,000 bytes each way, not to be counted.
    c.write_all(&[1; 1000]).unwrap();
    s.read_exact(&mut [0; 1000]).unwrap();
    s.write_all(&[2; 1000]).unwrap();
    c.read_exact(&mut [0; 1000]).unwrap();

    let mut probe = load(&ns);
    c.write_all(&pattern(4321, 8)).unwrap();
    s.read_exact(&mut vec![0; 4321]).unwrap();
    s.write_all(&pattern(1234, 9)).unwrap();
    c.read_exact(&mut vec![0; 1234]).unwrap();

    let conns = collect(&mut probe);
    let cl = find(&conns, client_addr.port(), server_addr.port());
    let sv = find(&conns, server_addr.port(), client_addr.port());
    assert_eq!((cl.bytes_sent, cl.bytes_received), (4321, 1234));
    assert_eq!((sv.bytes_sent, sv.bytes_received), (1234, 4321));
    for x in [&cl, &sv] {
        assert!(x.is_preexisting());
        assert_eq!(x.opened_ns, 0);
        assert_eq!(x.role, role::UNKNOWN, "the kernel did not see it open");
        assert_eq!(x.state, tcp_state::ESTABLISHED);
    }
    assert_eq!(cl.local(), client_addr);
    assert_eq!(cl.remote(), server_addr);
    // Issue 11: both ends carry this process's cgroup (the counters backend reads it from
    // /proc/<pid>/cgroup of the socket's owner).
    let own = own_cgroup_id();
    assert_eq!((cl.cgroup_id, sv.cgroup_id), (own, own));
    // Roles come from the namespace's listening sockets.
    let mut cache = ListenerCache::default();
    assert_eq!(
        roles::resolve(&cl, cache.for_conn(&cl)),
        (Role::Client, RoleSource::Listeners)
    );
    assert_eq!(
        roles::resolve(&sv, cache.for_conn(&sv)),
        (Role::Server, RoleSource::Listeners)
    );
    assert_no_errors(&probe);
}

#[test]
fn failed_connect_is_recorded_without_bytes() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let mut probe = load(&ns);
    // A port nobody listens on in this fresh namespace.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = closed.local_addr().unwrap().port();
    drop(closed);
    let err = TcpStream::connect(("127.0.0.1", p)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let c = wait_for(Duration::from_secs(30), || {
        collect(&mut probe)
            .into_values()
            .find(|c| c.dport == p && c.is_destroyed())
    })
    .expect("final record of the refused connection");
    assert_eq!(c.role(), Role::Client);
    assert_eq!((c.bytes_sent, c.bytes_received), (0, 0));
    assert!(c.flags & flags::ESTABLISHED == 0);
}

#[test]
fn netns_scope_counts_only_its_namespace() {
    if !privileged() {
        return;
    }
    let ns_a = NetNs::new();
    let mut probe_a = load(&ns_a);
    // A second namespace, on another thread, with its own probe.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let other = named("tm-ns-b", move || {
        let ns_b = NetNs::new();
        let mut probe_b = load(&ns_b);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[0; 7777]).unwrap();
        drop(c);
        assert_eq!(read_all(&mut s, 4096).0.len(), 7777);
        tx.send(inode(&ns_b)).unwrap();
        done_rx.recv().unwrap();
        let seen = collect(&mut probe_b);
        let sent: u64 = seen.values().map(|c| c.bytes_sent).sum();
        (
            seen.values().map(|c| c.netns).collect::<Vec<_>>(),
            sent,
            inode(&ns_b),
        )
    });
    let ino_b = rx.recv().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut s, _) = l.accept().unwrap();
    c.write_all(&[0; 3333]).unwrap();
    drop(c);
    assert_eq!(read_all(&mut s, 4096).0.len(), 3333);
    done_tx.send(()).unwrap();
    let (b_netns, b_sent, b_ino) = other.join().unwrap();

    let seen_a = collect(&mut probe_a);
    assert_ne!(inode(&ns_a), ino_b);
    assert!(
        seen_a.values().all(|c| c.netns == inode(&ns_a)),
        "{seen_a:?}"
    );
    assert_eq!(seen_a.values().map(|c| c.bytes_sent).sum::<u64>(), 3333);
    assert!(b_netns.iter().all(|&n| n == b_ino));
    assert_eq!(b_sent, 7777);
}

#[test]
fn nothing_stays_attached_after_drop() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let probe = load(&ns);
    let ids = probe.program_ids();
    // Lifecycle tracepoints plus the backend's programs (none for the counters backend).
    if probe.backend() == Backend::Counters {
        assert_eq!(ids.len(), 2, "{ids:?}");
    } else {
        assert!(ids.len() >= 4, "{ids:?}");
    }
    let loaded = |ids: &[u32]| -> Vec<u32> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ids.contains(id))
            .collect()
    };
    assert_eq!(
        loaded(&ids).len(),
        ids.len(),
        "programs are loaded while the probe lives"
    );
    drop(probe);
    // Program release is synchronous with the last fd close, but links may be freed after an
    // RCU (tasks-trace, for tracing links) grace period, which takes seconds in a TCG VM:
    // allow 30 s (the wait ends as soon as they are gone).
    let gone = wait_for(Duration::from_secs(30), || {
        loaded(&ids).is_empty().then_some(())
    });
    assert!(gone.is_some(), "still loaded: {:?}", loaded(&ids));
}

/// One connection over several reads (windows): each read's delta, computed by the agent's own
/// `delta::Tracker`, is exactly what moved since the previous read, and the deltas add up to
/// the total. Each round is a request and its reply: the requester's bytes are acknowledged
/// once the reply is back; the replier's once the requester's ACK arrived, which the test waits
/// for (for the counters backend a window edge can fall before that ACK: those bytes then move
/// to the next window, and the sum stays exact).
#[test]
fn deltas_of_one_connection_over_several_windows_add_up() {
    if !privileged() {
        return;
    }
    use trafficmap_daemon::delta::{Snapshot, Tracker};
    let ns = NetNs::new();
    let mut probe = load(&ns);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    const ROUNDS: [(usize, usize); 4] = [(10_007, 3_001), (1, 65_536), (250_000, 17), (3, 5)];
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let server = named("tm-windows", move || {
        let (mut s, _) = listener.accept().unwrap();
        for (req, reply) in ROUNDS {
            let mut got = vec![0u8; req];
            s.read_exact(&mut got).unwrap();
            s.write_all(&pattern(reply, 11)).unwrap();
            go_rx.recv().unwrap();
        }
    });
    let mut c = TcpStream::connect(server_addr).unwrap();
    let client_addr = c.local_addr().unwrap();
    let mut tracker = Tracker::new();
    // Per connection side, the bytes (sent, received) of each window.
    let mut windows: HashMap<u16, Vec<(u64, u64)>> = HashMap::new();
    let read_window = |probe: &mut Probe, tracker: &mut Tracker| {
        let mut snap = Snapshot::default();
        probe.read_live(&mut snap.live).unwrap();
        probe.read_closed(&mut snap.closed);
        let mut got: HashMap<u16, (u64, u64)> = HashMap::new();
        for d in tracker.apply(&snap) {
            let e = got.entry(d.conn.sport).or_default();
            e.0 += d.delta.bytes_sent;
            e.1 += d.delta.bytes_received;
        }
        tracker.end_drain();
        got
    };
    let (mut want_cl, mut want_sv) = ((0u64, 0u64), (0u64, 0u64));
    for (i, (req, reply)) in ROUNDS.iter().enumerate() {
        c.write_all(&pattern(*req, i as u8)).unwrap();
        let mut back = vec![0u8; *reply];
        c.read_exact(&mut back).unwrap();
        want_cl = (want_cl.0 + *req as u64, want_cl.1 + *reply as u64);
        want_sv = (want_sv.0 + *reply as u64, want_sv.1 + *req as u64);
        // Read windows until the server's reply is counted (at once for the per-call
        // backends; once its ACK arrived for the counters backend).
        let mut this = ((0u64, 0u64), (0u64, 0u64));
        let done = wait_for(Duration::from_secs(5), || {
            let got = read_window(&mut probe, &mut tracker);
            let cl = got.get(&client_addr.port()).copied().unwrap_or_default();
            let sv = got.get(&server_addr.port()).copied().unwrap_or_default();
            this = (
                (this.0.0 + cl.0, this.0.1 + cl.1),
                (this.1.0 + sv.0, this.1.1 + sv.1),
            );
            (this.1.0 == *reply as u64).then_some(())
        });
        assert!(done.is_some(), "round {i}: {this:?}");
        assert_eq!(this.0, (*req as u64, *reply as u64), "client, round {i}");
        assert_eq!(this.1, (*reply as u64, *req as u64), "server, round {i}");
        windows.entry(client_addr.port()).or_default().push(this.0);
        windows.entry(server_addr.port()).or_default().push(this.1);
        go_tx.send(()).unwrap();
    }
    server.join().unwrap();
    let sum = |v: &[(u64, u64)]| v.iter().fold((0, 0), |a, w| (a.0 + w.0, a.1 + w.1));
    assert_eq!(sum(&windows[&client_addr.port()]), want_cl);
    assert_eq!(sum(&windows[&server_addr.port()]), want_sv);
    // After the close, the final records add nothing beyond the total.
    drop(c);
    let mut after = (0u64, 0u64);
    let finished = wait_for(Duration::from_secs(10), || {
        let got = read_window(&mut probe, &mut tracker);
        for v in got.values() {
            after = (after.0 + v.0, after.1 + v.1);
        }
        let mut live = Vec::new();
        probe.read_live(&mut live).unwrap();
        live.is_empty().then_some(())
    });
    assert!(finished.is_some(), "connections not destroyed");
    assert_eq!(after, (0, 0));
    assert_no_errors(&probe);
}

/// This process's cgroup v2 id: the inode of its directory under the cgroup2 mount.
fn own_cgroup_id() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let m = trafficmap_daemon::containers::find_cgroup2(None).expect("a cgroup2 mount");
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    std::fs::metadata(m.mount_point.join(path.trim_start_matches('/')))
        .unwrap()
        .ino()
}

/// A pipe to tell the parent a child is ready: (read end, write end).
fn ready_pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: two fresh descriptors from pipe(2), each owned once.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// Issue 11: every backend records the cgroup v2 id of the process on each end: the client's
/// from `connect`/its sends, the server's from the process that called `listen` (the counters
/// backend names servers only that way). Two processes in two cgroups the test creates, with
/// container-like names, exchange exact bytes.
#[test]
fn cgroup_ids_of_both_ends() {
    if !privileged() {
        return;
    }
    let ns = NetNs::new();
    let mut probe = load(&ns);
    let server_cg = TestCgroup::new("probe", &format!("libpod-{}", "5e".repeat(32)));
    let client_cg = TestCgroup::new("probe", &format!("docker-{}.scope", "c1".repeat(32)));
    assert_ne!(server_cg.id(), client_cg.id());
    const PORT: u16 = 4711;
    let (request, reply) = (123_457usize, 7_654usize);
    let (mut ready_r, mut ready_w) = ready_pipe();
    let server = server_cg.fork(move || {
        let Ok(l) = TcpListener::bind(("127.0.0.1", PORT)) else {
            return false;
        };
        if ready_w.write_all(b"r").is_err() {
            return false;
        }
        let Ok((mut s, _)) = l.accept() else {
            return false;
        };
        let (got, _) = read_all(&mut s, 65536);
        got.len() == request && s.write_all(&pattern(reply, 3)).is_ok()
    });
    let mut b = [0u8; 1];
    ready_r.read_exact(&mut b).expect("server child ready");
    let client = client_cg.fork(move || {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", PORT)) else {
            return false;
        };
        if c.write_all(&pattern(request, 4)).is_err() || c.shutdown(Shutdown::Write).is_err() {
            return false;
        }
        read_all(&mut c, 65536).0.len() == reply
    });
    wait_child(client, "client child");
    wait_child(server, "server child");

    // The ends closed: wait for both final records (the counters backend reads its counters
    // at close).
    let mut seen: HashMap<ConnId, Conn> = HashMap::new();
    let ends = wait_for(Duration::from_secs(30), || {
        seen.extend(collect(&mut probe));
        let cl = seen
            .values()
            .find(|c| c.dport == PORT && c.is_destroyed())?;
        let sv = seen
            .values()
            .find(|c| c.sport == PORT && c.is_destroyed())?;
        Some((*cl, *sv))
    });
    let Some((cl, sv)) = ends else {
        panic!("no final records of both ends: {seen:?}");
    };
    assert_eq!(
        seen.values()
            .filter(|c| c.sport == PORT || c.dport == PORT)
            .count(),
        2,
        "{seen:?}"
    );
    assert_eq!(
        (
            cl.bytes_sent,
            cl.bytes_received,
            sv.bytes_sent,
            sv.bytes_received
        ),
        (request as u64, reply as u64, reply as u64, request as u64)
    );
    assert_eq!(
        (cl.cgroup_id, sv.cgroup_id),
        (client_cg.id(), server_cg.id())
    );
    assert_eq!((cl.role(), sv.role()), (Role::Client, Role::Server));
    assert_no_errors(&probe);
}
