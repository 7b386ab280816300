//! The supervisor's event loop: one thread, one `poll` over the listening socket, client
//! connections, container stdout/stderr pipes, and a signalfd (SIGCHLD, SIGTERM, SIGINT).
//!
//! Nothing in the loop blocks for long: `create` runs the OCI runtime as a child and answers
//! when the runtime is reaped, so logs keep flowing and other clients are served meanwhile.
//! Order within one wake-up: pipes first, then clients, then signals, so that output written
//! before a container exited is in its log before its exit is recorded.

use std::collections::VecDeque;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::container::{
    self, Container, CreateSpec, Creating, Exit, ReadOutcome, remove_files, write_exit_record,
};
use crate::cri_log::Stream;
use crate::protocol::{self, ErrorKind, MAX_REQUEST_LINE, PodInfo, Request, Response, attach};

/// Size of the read buffer for pipes and sockets. Small on purpose: it stays resident.
const READ_CHUNK: usize = 8 * 1024;
/// Reads of one pipe per wake-up, so that one chatty container does not starve the others.
const READS_PER_WAKEUP: usize = 4;
/// Exits of children the supervisor did not know yet, kept to match a container init that
/// died before its `create` finished.
const MAX_UNCLAIMED_EXITS: usize = 32;
/// Buffers above this capacity are given back after use.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The supervisor once set up: what it listens on and what it knows.
pub(crate) struct Supervisor {
    pub dir: PathBuf,
    pub info: PodInfo,
    pub listener: UnixListener,
    pub signals: SignalFd,
    /// PID 1 of the pod's PID namespace, while alive.
    pub init_pid: Option<Pid>,
    conns: Vec<Conn>,
    creating: Vec<Creating>,
    containers: Vec<Container>,
    unclaimed: VecDeque<(Pid, Exit, Instant)>,
    /// `Wait` requests not answered yet: connection, container id, deadline.
    waiters: Vec<(u64, String, Instant)>,
    next_serial: u64,
    exiting: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Container output as read, for attach clients.
    raw: Vec<u8>,
}

struct Conn {
    id: u64,
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// A request of this connection waits for the runtime; later lines wait too.
    busy: bool,
    /// The peer stopped sending (or sent a line too long): close once answered.
    eof: bool,
    /// Set once `Attach` was answered: the connection carries frames from then on.
    attached: Option<Attached>,
}

/// What an attached connection asked for.
#[derive(Clone, Copy)]
struct Attached {
    /// The container's serial.
    serial: u64,
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

/// Output queued for a slow attach client beyond this is dropped for that client (the log
/// still gets it), as containerd and conmon do: a client must not stall the container.
const MAX_ATTACH_BACKLOG: usize = 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Token {
    // Declared in processing order.
    CreatingPipe(u64, Stream),
    ContainerPipe(u64, Stream),
    ContainerStdin(u64),
    Conn(u64),
    Listener,
    Signals,
}

enum Outcome {
    Reply(Response),
    /// Answered later (a `create` in progress).
    Pending,
    Nothing,
}

impl Supervisor {
    pub fn new(
        dir: PathBuf,
        info: PodInfo,
        listener: UnixListener,
        signals: SignalFd,
        init_pid: Option<Pid>,
    ) -> Supervisor {
        Supervisor {
            dir,
            info,
            listener,
            signals,
            init_pid,
            conns: Vec::new(),
            creating: Vec::new(),
            containers: Vec::new(),
            unclaimed: VecDeque::new(),
            waiters: Vec::new(),
            next_serial: 1,
            exiting: false,
            buf: Vec::new(),
            out: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// Runs until a `Shutdown` (or SIGTERM) is accepted; returns the process exit code.
    pub fn run(mut self) -> i32 {
        let mut ready: Vec<(Token, PollFlags)> = Vec::new();
        while !self.exiting {
            ready.clear();
            if let Err(e) = self.wait(&mut ready) {
                // Only EINVAL/ENOMEM get here; nothing sensible is left to do.
                self.cleanup();
                return 100 + e as i32;
            }
            ready.sort_by_key(|(t, _)| *t);
            for &(token, events) in &ready {
                self.dispatch(token, events);
            }
            self.check_deadlines();
        }
        self.cleanup();
        0
    }

    /// Polls every fd and fills `ready` with the ones that have events.
    fn wait(&mut self, ready: &mut Vec<(Token, PollFlags)>) -> Result<(), Errno> {
        let mut entries: Vec<(Token, BorrowedFd<'_>, PollFlags)> = Vec::new();
        macro_rules! add {
            ($t:expr, $fd:expr, $ev:expr) => {
                entries.push(($t, $fd, $ev))
            };
        }
        add!(Token::Signals, self.signals.as_fd(), PollFlags::POLLIN);
        add!(Token::Listener, self.listener.as_fd(), PollFlags::POLLIN);
        let stdin_full = |serial: u64| {
            self.containers
                .iter()
                .any(|k| k.serial == serial && k.stdin_pending.len() >= MAX_ATTACH_BACKLOG)
        };
        for c in &self.conns {
            let mut ev = PollFlags::empty();
            let held_back = c.attached.is_some_and(|a| stdin_full(a.serial));
            if !c.busy && !c.eof && !held_back {
                ev |= PollFlags::POLLIN;
            }
            if !c.wbuf.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            // A busy connection with nothing to send is not polled: its hang-up would be
            // reported on every wake-up. It is found closed when the answer is written.
            if !ev.is_empty() {
                add!(Token::Conn(c.id), c.stream.as_fd(), ev);
            }
        }
        for c in &self.creating {
            for (stream, pipe) in [(Stream::Stdout, &c.stdout), (Stream::Stderr, &c.stderr)] {
                if let Some(p) = pipe {
                    add!(
                        Token::CreatingPipe(c.serial, stream),
                        p.file.as_fd(),
                        PollFlags::POLLIN
                    );
                }
            }
        }
        for c in &self.containers {
            if let Some(stdin) = &c.stdin
                && !c.stdin_pending.is_empty()
            {
                add!(
                    Token::ContainerStdin(c.serial),
                    stdin.as_fd(),
                    PollFlags::POLLOUT
                );
            }
            for (stream, pipe) in [(Stream::Stdout, &c.stdout), (Stream::Stderr, &c.stderr)] {
                if let Some(p) = pipe {
                    add!(
                        Token::ContainerPipe(c.serial, stream),
                        p.file.as_fd(),
                        PollFlags::POLLIN
                    );
                }
            }
        }
        let deadlines = self.creating.iter().map(|c| c.deadline);
        let timeout = match deadlines.chain(self.waiters.iter().map(|w| w.2)).min() {
            None => PollTimeout::NONE,
            Some(d) => {
                let ms = d.saturating_duration_since(Instant::now()).as_millis() + 1;
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds: Vec<PollFd> = entries
            .iter()
            .map(|&(_, fd, ev)| PollFd::new(fd, ev))
            .collect();
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        for (fd, &(token, _, _)) in fds.iter().zip(&entries) {
            if let Some(ev) = fd.revents().filter(|ev| !ev.is_empty()) {
                ready.push((token, ev));
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, token: Token, events: PollFlags) {
        match token {
            Token::Signals => self.on_signals(),
            Token::Listener => self.accept(),
            Token::Conn(id) => {
                if events.contains(PollFlags::POLLOUT) {
                    self.flush(id);
                }
                if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_conn(id);
                }
                self.close_if_done(id);
            }
            Token::CreatingPipe(serial, stream) => self.read_creating_pipe(serial, stream),
            Token::ContainerPipe(serial, stream) => self.read_container_pipe(serial, stream),
            Token::ContainerStdin(serial) => self.write_stdin(serial),
        }
    }

    // ---- clients -------------------------------------------------------------------------

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let id = self.serial();
                    self.conns.push(Conn {
                        id,
                        stream,
                        rbuf: Vec::new(),
                        wbuf: Vec::new(),
                        busy: false,
                        eof: false,
                        attached: None,
                    });
                }
                Err(e) if e.kind() == IoKind::Interrupted => {}
                // WouldBlock: all accepted. Other errors (EMFILE, a client that went away
                // before accept): try again on the next wake-up.
                Err(_) => return,
            }
        }
    }

    fn conn(&mut self, id: u64) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    fn read_conn(&mut self, id: u64) {
        self.buf.resize(READ_CHUNK, 0);
        let mut buf = std::mem::take(&mut self.buf);
        if let Some(c) = self.conn(id) {
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => c.eof = true,
                    Ok(n) => c.rbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == IoKind::Interrupted => continue,
                    Err(e) if e.kind() == IoKind::WouldBlock => {}
                    Err(_) => c.eof = true,
                }
                break;
            }
        }
        self.buf = buf;
        self.process_lines(id);
    }

    /// Handles the complete request lines of connection `id`, in order, until one is
    /// pending.
    fn process_lines(&mut self, id: u64) {
        loop {
            let Some(c) = self.conn(id) else { return };
            if c.busy {
                return;
            }
            if let Some(a) = c.attached {
                self.process_frames(id, a);
                return;
            }
            let line = match c.rbuf.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let mut line: Vec<u8> = c.rbuf.drain(..=nl).collect();
                    line.pop();
                    line
                }
                None if c.rbuf.len() > MAX_REQUEST_LINE => {
                    c.rbuf = Vec::new();
                    c.eof = true;
                    let msg = format!("request line longer than {MAX_REQUEST_LINE} bytes");
                    self.reply(id, Response::error(ErrorKind::InvalidRequest, msg));
                    return;
                }
                // A last request without its newline still gets an answer.
                None if c.eof && !c.rbuf.is_empty() => std::mem::take(&mut c.rbuf),
                None => {
                    if c.rbuf.is_empty() && c.rbuf.capacity() > KEEP_CAPACITY {
                        c.rbuf = Vec::new();
                    }
                    return;
                }
            };
            match self.handle_line(id, &line) {
                Outcome::Reply(resp) => self.reply(id, resp),
                Outcome::Pending => {
                    if let Some(c) = self.conn(id) {
                        c.busy = true;
                    }
                }
                Outcome::Nothing => {}
            }
            if self.exiting {
                return;
            }
        }
    }

    fn handle_line(&mut self, conn: u64, line: &[u8]) -> Outcome {
        let line = line.trim_ascii();
        if line.is_empty() {
            return Outcome::Nothing;
        }
        match serde_json::from_slice::<Request>(line) {
            Ok(req) => self.handle(conn, req),
            Err(e) => Outcome::Reply(Response::error(
                ErrorKind::InvalidRequest,
                format!("malformed request: {e}"),
            )),
        }
    }

    fn handle(&mut self, conn: u64, req: Request) -> Outcome {
        match req {
            Request::Create {
                id,
                runtime,
                runtime_root,
                bundle,
                log_path,
                stdin,
                stdin_once,
                tty,
            } => {
                let spec = CreateSpec {
                    id,
                    runtime,
                    runtime_root,
                    bundle,
                    log_path,
                    stdin,
                    stdin_once,
                    tty,
                };
                self.create(conn, spec)
            }
            Request::State => Outcome::Reply(Response::State {
                containers: self.containers.iter().map(Container::state).collect(),
            }),
            Request::Info => Outcome::Reply(Response::Info(self.info.clone())),
            Request::ReopenLog { id } => Outcome::Reply(self.reopen_log(&id)),
            Request::Forget { id } => Outcome::Reply(self.forget(&id)),
            Request::Kill { id, signal } => Outcome::Reply(self.kill(&id, signal)),
            Request::Attach {
                id,
                stdin,
                stdout,
                stderr,
            } => self.attach(conn, &id, stdin, stdout, stderr),
            Request::Wait { id, timeout_ms } => match self.containers.iter().find(|c| c.id == id) {
                None => Outcome::Reply(not_found(&id)),
                Some(c) if c.exit.is_some() => Outcome::Reply(Response::Waited { exited: true }),
                Some(_) => {
                    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                    self.waiters.push((conn, id, deadline));
                    Outcome::Pending
                }
            },
            Request::Shutdown => match self.busy_containers() {
                Some(msg) => Outcome::Reply(Response::error(ErrorKind::Running, msg)),
                None => {
                    self.reply(conn, Response::Ok);
                    self.flush_blocking(conn);
                    self.exiting = true;
                    Outcome::Nothing
                }
            },
        }
    }

    /// Queues `resp` for connection `id` and tries to send it right away. A connection that
    /// is gone is fine: the answer is dropped, whatever the request did stays done.
    fn reply(&mut self, id: u64, resp: Response) {
        let Some(c) = self.conn(id) else { return };
        match serde_json::to_vec(&resp) {
            Ok(mut line) => {
                line.push(b'\n');
                c.wbuf.extend_from_slice(&line);
            }
            Err(e) => {
                // Cannot happen for these types; answer something parseable anyway.
                let fallback =
                    Response::error(ErrorKind::Io, format!("cannot encode response: {e}"));
                if let Ok(line) = serde_json::to_vec(&fallback) {
                    c.wbuf.extend_from_slice(&line);
                    c.wbuf.push(b'\n');
                }
            }
        }
        self.flush(id);
    }

    fn flush(&mut self, id: u64) {
        let Some(c) = self.conn(id) else { return };
        while !c.wbuf.is_empty() {
            match c.stream.write(&c.wbuf) {
                Ok(n) => {
                    c.wbuf.drain(..n);
                }
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(e) if e.kind() == IoKind::WouldBlock => return,
                Err(_) => {
                    // The peer is gone: drop what it will never read.
                    c.wbuf = Vec::new();
                    c.eof = true;
                    c.rbuf = Vec::new();
                    return;
                }
            }
        }
        if c.wbuf.capacity() > KEEP_CAPACITY {
            c.wbuf = Vec::new();
        }
    }

    /// Sends what is queued for `id` even if the peer is slow (bounded): used before exiting.
    fn flush_blocking(&mut self, id: u64) {
        let Some(c) = self.conn(id) else { return };
        let _ = c.stream.set_nonblocking(false);
        let _ = c.stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = c.stream.write_all(&c.wbuf);
        c.wbuf.clear();
    }

    fn close_if_done(&mut self, id: u64) {
        self.conns
            .retain(|c| !(c.id == id && c.eof && !c.busy && c.wbuf.is_empty()));
    }

    // ---- requests --------------------------------------------------------------------------

    fn create(&mut self, conn: u64, spec: CreateSpec) -> Outcome {
        if let Err(resp) = spec.validate() {
            return Outcome::Reply(resp);
        }
        let exists = self.containers.iter().any(|c| c.id == spec.id)
            || self.creating.iter().any(|c| c.spec.id == spec.id);
        if exists {
            return Outcome::Reply(Response::error(
                ErrorKind::AlreadyExists,
                format!("container {} already exists", spec.id),
            ));
        }
        let serial = self.serial();
        match container::spawn_create(&self.dir, serial, conn, spec) {
            Ok(c) => {
                self.creating.push(c);
                Outcome::Pending
            }
            Err(resp) => Outcome::Reply(resp),
        }
    }

    fn attach(&mut self, conn: u64, id: &str, stdin: bool, stdout: bool, stderr: bool) -> Outcome {
        let Some(c) = self.containers.iter().find(|c| c.id == id) else {
            return Outcome::Reply(not_found(id));
        };
        if stdin && c.stdin.is_none() && c.exit.is_none() {
            return Outcome::Reply(Response::error(
                ErrorKind::InvalidRequest,
                format!("container {id} was not created with stdin"),
            ));
        }
        let (tty, serial) = (c.tty, c.serial);
        let output_over = c.stdout.is_none() && c.stderr.is_none();
        self.reply(conn, Response::Attached { tty });
        if let Some(k) = self.conn(conn) {
            k.attached = Some(Attached {
                serial,
                stdin,
                // A terminal has one output stream.
                stdout: stdout || (tty && stderr),
                stderr: stderr && !tty,
            });
            if output_over {
                // Nothing will come: the client gets EOF once the answer is sent.
                k.eof = true;
            }
        }
        // Frames that came right behind the request line.
        self.process_lines(conn);
        Outcome::Nothing
    }

    /// Handles the complete frames an attached client sent: input, its end, resizes.
    fn process_frames(&mut self, id: u64, a: Attached) {
        let Some(k) = self.conns.iter().position(|c| c.id == id) else {
            return;
        };
        let mut rbuf = std::mem::take(&mut self.conns[k].rbuf);
        let mut used = 0;
        let mut bad = None;
        while let Some(frame) = match attach::decode(&rbuf[used..]) {
            Ok(f) => f,
            Err(e) => {
                bad = Some(e);
                None
            }
        } {
            let (kind, payload, n) = frame;
            let Some(c) = self.containers.iter_mut().find(|c| c.serial == a.serial) else {
                break;
            };
            match kind {
                attach::STDIN if a.stdin && c.stdin.is_some() && !c.stdin_closing => {
                    c.stdin_pending.extend_from_slice(payload);
                }
                attach::STDIN_CLOSE if a.stdin && c.stdin_once => c.stdin_closing = true,
                attach::RESIZE if payload.len() == 4 => {
                    let w = u16::from_be_bytes([payload[0], payload[1]]);
                    let h = u16::from_be_bytes([payload[2], payload[3]]);
                    if let (true, Some(master)) = (c.tty, &c.stdin) {
                        let _ = crate::console::set_size(master, w, h);
                    }
                }
                _ => {}
            }
            used += n;
        }
        rbuf.drain(..used);
        let c = &mut self.conns[k];
        c.rbuf = rbuf;
        if bad.is_some() {
            // A malformed frame ends this session; the container is not affected.
            c.eof = true;
            c.rbuf = Vec::new();
        } else if c.eof {
            // The client hung up: for stdin_once that ends the container's stdin.
            if let Some(c) = self.containers.iter_mut().find(|c| c.serial == a.serial)
                && a.stdin
                && c.stdin_once
            {
                c.stdin_closing = true;
            }
        }
        self.write_stdin(a.serial);
        self.close_if_done(id);
    }

    /// Writes attach input the container has not taken yet (non-blocking).
    fn write_stdin(&mut self, serial: u64) {
        let Some(c) = self.containers.iter_mut().find(|c| c.serial == serial) else {
            return;
        };
        let Some(stdin) = c.stdin.as_mut() else {
            c.stdin_pending = Vec::new();
            return;
        };
        while !c.stdin_pending.is_empty() {
            match stdin.write(&c.stdin_pending) {
                Ok(n) => {
                    c.stdin_pending.drain(..n);
                }
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(e) if e.kind() == IoKind::WouldBlock => return,
                Err(_) => {
                    // The container closed its stdin: input has nowhere to go.
                    c.stdin_pending = Vec::new();
                    c.stdin = None;
                    return;
                }
            }
        }
        if c.stdin_closing && !c.tty {
            c.stdin = None;
        }
    }

    fn kill(&mut self, id: &str, signal: i32) -> Response {
        let Some(c) = self.containers.iter().find(|c| c.id == id) else {
            return not_found(id);
        };
        if c.exit.is_some() {
            return Response::Ok;
        }
        let sig = match Signal::try_from(signal) {
            Ok(s) => s,
            Err(_) => {
                return Response::error(
                    ErrorKind::InvalidRequest,
                    format!("invalid signal {signal}"),
                );
            }
        };
        match kill(c.pid, sig) {
            Ok(()) | Err(Errno::ESRCH) => Response::Ok,
            Err(e) => Response::error(
                ErrorKind::Io,
                format!("signal {sig} to container {id} (pid {}): {e}", c.pid),
            ),
        }
    }

    /// Answers the `Wait` requests selected by `done` (exited or timed out).
    fn answer_waiters(&mut self, mut done: impl FnMut(&str, Instant) -> Option<bool>) {
        let mut answered = Vec::new();
        self.waiters
            .retain(|(conn, id, deadline)| match done(id, *deadline) {
                Some(exited) => {
                    answered.push((*conn, exited));
                    false
                }
                None => true,
            });
        for (conn, exited) in answered {
            if let Some(c) = self.conn(conn) {
                c.busy = false;
            }
            self.reply(conn, Response::Waited { exited });
            self.process_lines(conn);
            self.close_if_done(conn);
        }
    }

    fn reopen_log(&mut self, id: &str) -> Response {
        let Some(c) = self.containers.iter_mut().find(|c| c.id == id) else {
            return not_found(id);
        };
        match c.log.reopen() {
            Ok(()) => Response::Ok,
            Err(e) => Response::error(
                ErrorKind::Io,
                format!(
                    "cannot reopen log file {} of container {id}: {e}",
                    c.log.path.display()
                ),
            ),
        }
    }

    fn forget(&mut self, id: &str) -> Response {
        if self.creating.iter().any(|c| c.spec.id == id) {
            return Response::error(
                ErrorKind::Running,
                format!("container {id} is being created"),
            );
        }
        if let Some(c) = self
            .containers
            .iter()
            .find(|c| c.id == id && c.exit.is_none())
        {
            return Response::error(
                ErrorKind::Running,
                format!("container {id} is still running (pid {})", c.pid),
            );
        }
        self.containers.retain(|c| c.id != id);
        remove_files(&self.dir, id);
        Response::Ok
    }

    /// Why the supervisor cannot exit now, if it cannot.
    fn busy_containers(&self) -> Option<String> {
        let running: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| c.exit.is_none())
            .map(|c| c.id.as_str())
            .chain(self.creating.iter().map(|c| c.spec.id.as_str()))
            .collect();
        if running.is_empty() {
            None
        } else {
            Some(format!(
                "{} container(s) still running: {}",
                running.len(),
                running.join(", ")
            ))
        }
    }

    // ---- pipes -----------------------------------------------------------------------------

    /// Output of the runtime during `create`: kept for an error message.
    fn read_creating_pipe(&mut self, serial: u64, stream: Stream) {
        self.buf.resize(READ_CHUNK, 0);
        let Some(c) = self.creating.iter_mut().find(|c| c.serial == serial) else {
            return;
        };
        let slot = c.pipe_mut(stream);
        let Some(pipe) = slot else { return };
        match pipe.read(&mut self.buf) {
            ReadOutcome::Data(n) => c.keep_output(&self.buf[..n]),
            ReadOutcome::WouldBlock => {}
            // The runtime failed before handing the pipe on; its exit finishes the create.
            ReadOutcome::Eof => *slot = None,
        }
    }

    fn read_container_pipe(&mut self, serial: u64, stream: Stream) {
        if let Some(i) = self.containers.iter().position(|c| c.serial == serial) {
            self.pump(i, stream, READS_PER_WAKEUP);
        }
    }

    /// Reads up to `max_reads` chunks of container `i`'s `stream` into its log (all that is
    /// buffered with `usize::MAX`). At end of stream, writes the unfinished line and closes
    /// the pipe, and the log once both streams ended.
    fn pump(&mut self, i: usize, stream: Stream, max_reads: usize) {
        self.buf.resize(READ_CHUNK, 0);
        let c = &mut self.containers[i];
        let serial = c.serial;
        let Some(pipe) = c.pipe_mut(stream).as_mut() else {
            return;
        };
        self.out.clear();
        self.raw.clear();
        let mut eof = false;
        for _ in 0..max_reads {
            match pipe.read(&mut self.buf) {
                ReadOutcome::Data(n) => {
                    self.raw.extend_from_slice(&self.buf[..n]);
                    pipe.framer
                        .feed(&self.buf[..n], SystemTime::now(), &mut self.out)
                }
                ReadOutcome::WouldBlock => break,
                ReadOutcome::Eof => {
                    pipe.framer.finish(SystemTime::now(), &mut self.out);
                    eof = true;
                    break;
                }
            }
        }
        c.log.write(&self.out);
        let mut output_over = false;
        if eof {
            *c.pipe_mut(stream) = None;
            if c.stdout.is_none() && c.stderr.is_none() {
                c.log.close();
                output_over = true;
            }
        }
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
        self.fan_out(serial, stream, output_over);
    }

    /// Sends what `pump` just read to the container's attach clients; once the output is
    /// over, they are closed (after what is queued for them).
    fn fan_out(&mut self, serial: u64, stream: Stream, output_over: bool) {
        let kind = match stream {
            Stream::Stdout => attach::STDOUT,
            Stream::Stderr => attach::STDERR,
        };
        let mut touched = Vec::new();
        for c in &mut self.conns {
            let Some(a) = c.attached.filter(|a| a.serial == serial) else {
                continue;
            };
            let wanted = match stream {
                Stream::Stdout => a.stdout,
                Stream::Stderr => a.stderr,
            };
            if wanted && !self.raw.is_empty() && c.wbuf.len() < MAX_ATTACH_BACKLOG {
                for chunk in self.raw.chunks(attach::MAX_PAYLOAD) {
                    attach::encode(kind, chunk, &mut c.wbuf);
                }
            }
            if output_over {
                c.eof = true;
            }
            touched.push(c.id);
        }
        for id in touched {
            self.flush(id);
            self.close_if_done(id);
        }
        if self.raw.capacity() > KEEP_CAPACITY {
            self.raw = Vec::new();
        }
    }

    // ---- children --------------------------------------------------------------------------

    fn on_signals(&mut self) {
        let mut reap = false;
        let mut stop = false;
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => reap = true,
                Ok(Signal::SIGTERM | Signal::SIGINT) => stop = true,
                _ => {}
            }
        }
        // Reap even without a SIGCHLD read: signals of the same kind coalesce.
        if reap || stop {
            self.reap();
        }
        // SIGTERM/SIGINT stop an idle supervisor only: a stray `kill` must not orphan a
        // running pod's containers (the daemon stops containers, then sends Shutdown).
        if stop && self.busy_containers().is_none() {
            self.exiting = true;
        }
    }

    /// Collects every terminated child.
    fn reap(&mut self) {
        let mut exits = Vec::new();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        exits.push((pid, status));
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        // Containers first: an init that died in the same batch as its runtime must be known
        // as reaped when the create finishes.
        exits.sort_by_key(|(pid, _)| self.creating.iter().any(|c| c.runtime_pid == *pid));
        for (pid, status) in exits {
            self.on_exit(pid, status);
        }
    }

    fn on_exit(&mut self, pid: Pid, status: WaitStatus) {
        let Some(exit) = Exit::from_status(status) else {
            return;
        };
        if self.init_pid == Some(pid) {
            // The pod's PID namespace is gone with its init (the kernel killed every process
            // in it); containers can no longer join it.
            self.init_pid = None;
            self.info.init_pid = None;
            self.info.namespaces.pid = None;
            return;
        }
        if let Some(i) = self.creating.iter().position(|c| c.runtime_pid == pid) {
            let creating = self.creating.swap_remove(i);
            self.finish_create(creating, status);
            return;
        }
        if let Some(i) = self
            .containers
            .iter()
            .position(|c| c.pid == pid && c.exit.is_none())
        {
            self.container_exited(i, exit);
            return;
        }
        // A runtime helper or an orphan of the pod: nothing to record, except in case it is
        // the init of a container whose create has not finished.
        if !self.creating.is_empty() {
            if self.unclaimed.len() == MAX_UNCLAIMED_EXITS {
                self.unclaimed.pop_front();
            }
            self.unclaimed.push_back((pid, exit, Instant::now()));
        }
    }

    fn finish_create(&mut self, mut c: Creating, status: WaitStatus) {
        // The runtime is gone: what is still in the pipes is its last output.
        self.buf.resize(READ_CHUNK, 0);
        for stream in [Stream::Stdout, Stream::Stderr] {
            while let Some(pipe) = c.pipe_mut(stream).as_mut() {
                match pipe.read(&mut self.buf) {
                    ReadOutcome::Data(n) => c.keep_output(&self.buf[..n]),
                    ReadOutcome::WouldBlock => break,
                    ReadOutcome::Eof => *c.pipe_mut(stream) = None,
                }
            }
        }
        let conn = c.conn;
        let unclaimed = &self.unclaimed;
        let reaped = |pid: Pid, since: Instant| {
            unclaimed
                .iter()
                .find(|(p, _, at)| *p == pid && *at >= since)
                .map(|(_, exit, _)| *exit)
        };
        let resp = match container::finish_create(&self.dir, c, status, reaped) {
            Ok((container, early_exit)) => {
                let pid = container.pid;
                self.containers.push(container);
                if let Some(exit) = early_exit {
                    let i = self.containers.len() - 1;
                    self.container_exited(i, exit);
                }
                Response::Created {
                    pid: pid.as_raw() as u32,
                }
            }
            Err(resp) => resp,
        };
        if self.creating.is_empty() {
            self.unclaimed.clear();
        }
        if let Some(c) = self.conn(conn) {
            c.busy = false;
        }
        self.reply(conn, resp);
        self.process_lines(conn);
        self.close_if_done(conn);
    }

    /// Records container `i`'s exit, after moving what it wrote into its log, and persists it.
    fn container_exited(&mut self, i: usize, exit: Exit) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            self.pump(i, stream, usize::MAX);
        }
        let c = &mut self.containers[i];
        c.exit = Some(exit);
        c.stdin = None;
        let record = c.exit_record(&exit);
        // The in-memory state is still right if this fails; the daemon asks State first.
        let _ = write_exit_record(&self.dir, &record);
        let id = c.id.clone();
        self.answer_waiters(|w, _| (w == id).then_some(true));
    }

    /// Kills runtimes that ran past their deadline; their reaping answers the request.
    fn check_deadlines(&mut self) {
        let now = Instant::now();
        if self.waiters.iter().any(|w| w.2 <= now) {
            self.answer_waiters(|_, deadline| (deadline <= now).then_some(false));
        }
        for c in &mut self.creating {
            if !c.timed_out && now >= c.deadline {
                c.timed_out = true;
                let _ = kill(c.runtime_pid, Signal::SIGKILL);
            }
        }
    }

    fn serial(&mut self) -> u64 {
        let s = self.next_serial;
        self.next_serial += 1;
        s
    }

    /// Leaves nothing a daemon could mistake for a live supervisor: socket and pid file go
    /// first, then the pod's PID namespace init is killed and reaped.
    fn cleanup(&mut self) {
        let _ = std::fs::remove_file(protocol::socket_path(&self.dir));
        let _ = std::fs::remove_file(protocol::pid_path(&self.dir));
        if let Some(pid) = self.init_pid.take() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

fn not_found(id: &str) -> Response {
    Response::error(ErrorKind::NotFound, format!("container {id} not found"))
}
