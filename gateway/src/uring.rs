//! The io_uring socket backend (`gateway.io_backend = "io_uring"`, cargo feature `io-uring`).
//!
//! # What differs from epoll
//! Only how a session's queued frames reach its socket. With epoll every writer makes its
//! own `writev` system call. Here a writer pushes a `sendmsg` entry (the same shared frames
//! as its iovecs, no copy) onto its core's ring, and one flush task submits every entry
//! pushed during a dispatch round with a single `io_uring_enter`: the LocalSet runs all the
//! writers that a round woke before the flush task it woke with the first of them. The
//! session state machine, the slow-consumer policies, the queue and the read side are the
//! same code for both backends. Accepting and reading stay on tokio's epoll: they are the
//! cold path (one accept per connection, a few small requests from each client).
//!
//! # Ownership
//! The kernel reads the frames until the entry completes, so an operation owns its frames,
//! iovecs and `msghdr` in a boxed slot until then. If the writing future is dropped first
//! (the session ends), the slot is marked orphaned and freed when its completion arrives,
//! never before.
//!
//! # Non-blocking sockets
//! tokio's sockets are `O_NONBLOCK`. io_uring tries the send at once and, when the socket is
//! full, arms its own poll and completes later; should the kernel report `EAGAIN` anyway, the
//! writer waits for writability through tokio and submits again. A short send resubmits the
//! rest.

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Entries per ring: more than the writers one dispatch round wakes on a busy core.
const RING_ENTRIES: u32 = 4096;
/// Most iovecs per `sendmsg` (below `IOV_MAX`).
const MAX_IOV: usize = 256;

/// Checks that the kernel grants io_uring here (`Gateway::start` calls it, so a refused
/// backend is a start-up error and not a silent fallback).
pub(crate) fn probe() -> std::io::Result<()> {
    IoUring::new(8).map(drop)
}

/// One in-flight operation's memory, boxed so the kernel's pointers stay valid.
struct Slot {
    bufs: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    result: Option<i32>,
    waker: Option<Waker>,
    orphaned: bool,
}

/// A core's ring, its in-flight slots, and the tasks that submit and reap.
pub(crate) struct Uring {
    ring: RefCell<IoUring>,
    slots: RefCell<Vec<Option<Box<Slot>>>>,
    free: RefCell<Vec<usize>>,
    flush_pending: Cell<bool>,
    flush: Notify,
    eventfd: AsyncFd<OwnedFd>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring").field("slots", &self.slots.borrow().len()).finish_non_exhaustive()
    }
}

impl Uring {
    /// A ring for the current core, with its flush and reap tasks spawned on the LocalSet.
    pub(crate) fn start() -> std::io::Result<Rc<Uring>> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor that nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        let u = Rc::new(Uring {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            flush_pending: Cell::new(false),
            flush: Notify::new(),
            // SAFETY: an OwnedFd always returns the descriptor it owns, which stays open
            // until the AsyncFd (its owner) is dropped.
            eventfd: unsafe { AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE) }
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        });
        let flusher = u.clone();
        tokio::task::spawn_local(async move {
            loop {
                flusher.flush.notified().await;
                flusher.flush_pending.set(false);
                flusher.submit();
                flusher.reap();
            }
        });
        let reaper = u.clone();
        tokio::task::spawn_local(async move {
            loop {
                let Ok(mut guard) = reaper.eventfd.readable().await else { return };
                guard.clear_ready();
                let mut buf = [0u8; 8];
                // SAFETY: reads 8 bytes into a buffer of 8 bytes we own; the fd is ours.
                while unsafe { libc::read(reaper.eventfd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) } == 8 {}
                reaper.reap();
            }
        });
        Ok(u)
    }

    fn submit(&self) {
        if let Err(e) = self.ring.borrow().submit() {
            tracing::warn!(error = %e, "io_uring submit failed; the entries stay queued for the next flush");
        }
    }

    /// Hands every completion to its slot.
    fn reap(&self) {
        let done: Vec<(u64, i32)> = {
            let mut ring = self.ring.borrow_mut();
            ring.completion().map(|c| (c.user_data(), c.result())).collect()
        };
        let mut slots = self.slots.borrow_mut();
        for (id, res) in done {
            let id = id as usize;
            let Some(Some(slot)) = slots.get_mut(id) else { continue };
            if slot.orphaned {
                slots[id] = None;
                self.free.borrow_mut().push(id);
                continue;
            }
            slot.result = Some(res);
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }

    /// Queues one `sendmsg` of `bufs[idx][off..]` and the buffers after it.
    fn send(self: &Rc<Self>, fd: RawFd, bufs: Vec<Bytes>, idx: usize, off: usize) -> Op {
        let mut slot = Box::new(Slot {
            bufs,
            iov: Vec::new(),
            // SAFETY: msghdr is plain old data; all-zero is its empty value.
            msg: unsafe { std::mem::zeroed() },
            result: None,
            waker: None,
            orphaned: false,
        });
        for (i, b) in slot.bufs.iter().enumerate().skip(idx).take(MAX_IOV) {
            let s = if i == idx { &b[off..] } else { &b[..] };
            slot.iov.push(libc::iovec { iov_base: s.as_ptr() as *mut libc::c_void, iov_len: s.len() });
        }
        slot.msg.msg_iov = slot.iov.as_mut_ptr();
        slot.msg.msg_iovlen = slot.iov.len();
        let entry = opcode::SendMsg::new(types::Fd(fd), &slot.msg).flags(libc::MSG_NOSIGNAL as u32).build();
        let id = {
            let mut slots = self.slots.borrow_mut();
            match self.free.borrow_mut().pop() {
                Some(id) => {
                    slots[id] = Some(slot);
                    id
                }
                None => {
                    slots.push(Some(slot));
                    slots.len() - 1
                }
            }
        };
        let entry = entry.user_data(id as u64);
        loop {
            let pushed = {
                let mut ring = self.ring.borrow_mut();
                // SAFETY: the entry points into the boxed slot `id`, which stays allocated
                // (and its buffers untouched) until the completion for `id` is reaped.
                let ok = unsafe { ring.submission().push(&entry) }.is_ok();
                ok
            };
            if pushed {
                break;
            }
            // Full: submit what is queued to make room.
            self.submit();
        }
        if !self.flush_pending.replace(true) {
            self.flush.notify_one();
        }
        Op { ring: self.clone(), id, done: false }
    }
}

/// An in-flight `sendmsg`: resolves to the kernel's result and the buffers back.
struct Op {
    ring: Rc<Uring>,
    id: usize,
    done: bool,
}

impl Future for Op {
    type Output = (i32, Vec<Bytes>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        let mut slots = self.ring.slots.borrow_mut();
        let Some(Some(slot)) = slots.get_mut(id) else {
            return Poll::Ready((-libc::ECANCELED, Vec::new()));
        };
        match slot.result {
            Some(res) => {
                let bufs = std::mem::take(&mut slot.bufs);
                slots[id] = None;
                drop(slots);
                self.ring.free.borrow_mut().push(id);
                self.done = true;
                Poll::Ready((res, bufs))
            }
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut slots = self.ring.slots.borrow_mut();
        if let Some(Some(slot)) = slots.get_mut(self.id) {
            if slot.result.is_some() {
                slots[self.id] = None;
                drop(slots);
                self.ring.free.borrow_mut().push(self.id);
            } else {
                // The kernel still holds pointers into the slot: free it on completion.
                slot.orphaned = true;
                slot.waker = None;
            }
        }
    }
}

/// Writes all of `batch` to the socket through the ring; returns bytes written and the
/// (emptied) batch for reuse.
pub(crate) async fn write_all(
    ring: &Rc<Uring>,
    stream: &tokio::net::tcp::OwnedWriteHalf,
    batch: Vec<Bytes>,
) -> (std::io::Result<usize>, Vec<Bytes>) {
    let fd = stream.as_ref().as_raw_fd();
    let total: usize = batch.iter().map(Bytes::len).sum();
    let mut bufs = batch;
    let (mut idx, mut off) = (0usize, 0usize);
    while idx < bufs.len() {
        let (res, back) = ring.send(fd, bufs, idx, off).await;
        bufs = back;
        if res == -libc::EAGAIN {
            // Forget tokio's cached readiness (it never saw this socket full), then wait.
            let _ = stream
                .as_ref()
                .try_io(tokio::io::Interest::WRITABLE, || Err::<(), _>(std::io::ErrorKind::WouldBlock.into()));
            if let Err(e) = stream.as_ref().writable().await {
                return (Err(e), bufs);
            }
            continue;
        }
        if res < 0 {
            return (Err(std::io::Error::from_raw_os_error(-res)), bufs);
        }
        if res == 0 {
            return (Err(std::io::ErrorKind::WriteZero.into()), bufs);
        }
        let mut n = res as usize;
        while n > 0 && idx < bufs.len() {
            let left = bufs[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    bufs.clear();
    (Ok(total), bufs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn frames_arrive_whole_and_in_order_through_the_ring() {
        if probe().is_err() {
            eprintln!("io_uring is not available here; skipping");
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let ring = Uring::start().unwrap();
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = l.accept().await.unwrap();
            let (_r, w) = server.into_split();
            // More than fits a socket buffer at once, in many frames: short sends and
            // EAGAIN must both be handled.
            let frames: Vec<Bytes> = (0..20_000u32).map(|i| Bytes::from(format!("frame {i:08}\n"))).collect();
            let want: Vec<u8> = frames.iter().flat_map(|b| b.iter().copied()).collect();
            let reader = tokio::task::spawn_local(async move {
                let mut client = client;
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while got.len() < 20_000 * 15 {
                    tokio::time::sleep(std::time::Duration::from_micros(50)).await;
                    let n = client.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&buf[..n]);
                }
                got
            });
            let mut total = 0;
            for chunk in frames.chunks(1000) {
                let (r, back) = write_all(&ring, &w, chunk.to_vec()).await;
                total += r.unwrap();
                assert!(back.is_empty());
            }
            assert_eq!(total, want.len());
            assert_eq!(reader.await.unwrap(), want);
        });
    }
}
