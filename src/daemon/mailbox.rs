//! The event loop's mailbox: any thread posts a message; the loop polls one eventfd that says
//! messages are waiting, next to its signals, sockets and uevents.

use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// The sending side: cheap to clone, one per thread that posts.
pub struct Mailbox<T> {
    tx: Sender<T>,
    wake: Arc<EventFd>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            wake: Arc::clone(&self.wake),
        }
    }
}

/// The loop's side.
pub struct Inbox<T> {
    rx: Receiver<T>,
    wake: Arc<EventFd>,
}

pub fn mailbox<T>() -> nix::Result<(Mailbox<T>, Inbox<T>)> {
    let wake = Arc::new(EventFd::from_flags(
        EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
    )?);
    let (tx, rx) = channel();
    Ok((
        Mailbox {
            tx,
            wake: Arc::clone(&wake),
        },
        Inbox { rx, wake },
    ))
}

impl<T> Mailbox<T> {
    /// Posts a message; false once the loop is gone (the daemon is stopping).
    pub fn post(&self, msg: T) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        // Only fails when the counter would overflow: the loop is woken already.
        let _ = self.wake.write(1);
        true
    }
}

impl<T> Inbox<T> {
    /// Readable while messages are waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Every message waiting now, in the order they were posted.
    pub fn take(&self) -> Vec<T> {
        // Reset first: a message posted after this read wakes the loop again.
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }

    /// The next message, waiting up to `timeout` (for shutdown, which no longer polls).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<T> {
        self.rx.recv_timeout(timeout).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    fn readable<T>(inbox: &Inbox<T>) -> bool {
        let mut fds = [PollFd::new(inbox.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn posts_wake_the_loop_and_arrive_in_order() {
        let (mailbox, inbox) = mailbox::<u32>().unwrap();
        assert!(!readable(&inbox));
        let other = mailbox.clone();
        std::thread::spawn(move || {
            for i in 0..100 {
                other.post(i);
            }
        })
        .join()
        .unwrap();
        assert!(readable(&inbox));
        assert_eq!(inbox.take(), (0..100).collect::<Vec<_>>());
        assert!(!readable(&inbox), "taken: nothing waits");
        drop(inbox);
        assert!(!mailbox.post(1), "the loop is gone");
    }
}
