//! The event bus: every state change, numbered in the order it is emitted, goes to each
//! subscriber through a bounded queue of its own. The thread that emits never writes to a
//! socket: a subscriber that stops reading fills only its own queue, and is then dropped
//! with an error, never slowing the daemon or the other subscribers.

use super::auth::Sees;
use crate::protocol::{write_frame, DeviceInfo, ErrorKind, EventKind, Response};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Events a subscriber may leave unread before it is dropped.
pub const QUEUE: usize = 256;
/// A subscriber whose socket takes no event within this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// One encoded event frame, shared by every queue it is put on.
type Frame = Arc<[u8]>;

struct Subscriber {
    id: u64,
    /// Which devices' events it may have.
    sees: Sees,
    queue: SyncSender<Frame>,
    /// Dropped for not reading: its writer says so before it hangs up.
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    subscribers: Vec<Subscriber>,
    next_id: u64,
    /// The number of the last event emitted.
    seq: u64,
}

#[derive(Default)]
pub struct Bus {
    /// Shared with each subscriber's hangup watcher.
    inner: Arc<Mutex<Inner>>,
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn unsubscribe(inner: &Mutex<Inner>, id: u64) {
    lock(inner).subscribers.retain(|s| s.id != id);
}

impl Bus {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Numbers the event and queues it for every subscriber. Never blocks on a client.
    pub fn emit(&self, event: EventKind, device: DeviceInfo) {
        let mut inner = self.inner();
        inner.seq += 1;
        let frame = Response::Event {
            event,
            device: device.clone(),
            seq: inner.seq,
        };
        let mut line = match serde_json::to_vec(&frame) {
            Ok(line) => line,
            Err(e) => {
                log::error!("cannot encode an event: {e}");
                return;
            }
        };
        line.push(b'\n');
        let line: Frame = line.into();
        inner.subscribers.retain(|s| {
            !s.sees.sees(&device)
                || match s.queue.try_send(Arc::clone(&line)) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        log::warn!("a subscriber left {QUEUE} events unread; dropping it");
                        s.lagged.store(true, Ordering::Relaxed);
                        false
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                }
        });
    }

    /// Serves one subscriber on the calling thread until it hangs up, stops reading, or the
    /// daemon drops it: writes its queue to `stream`, in order.
    pub fn serve(&self, stream: UnixStream, sees: Sees) {
        let (queue, frames) = sync_channel(QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = {
            let mut inner = self.inner();
            inner.next_id += 1;
            let id = inner.next_id;
            inner.subscribers.push(Subscriber {
                id,
                sees,
                queue,
                lagged: Arc::clone(&lagged),
            });
            id
        };
        if write_frame(&mut &stream, &Response::Subscribed).is_ok() {
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            self.watch_hangup(&stream, id);
            write_all(&stream, &frames);
        }
        unsubscribe(&self.inner, id);
        if lagged.load(Ordering::Relaxed) {
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            let _ = write_frame(
                &mut &stream,
                &Response::Error {
                    kind: ErrorKind::Failed,
                    message: format!("dropped: {QUEUE} events were left unread"),
                },
            );
        }
        // Ends the hangup watcher's read, too.
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    /// A subscriber sends nothing more; a read that ends means it hung up. Its queue is
    /// then dropped, which ends the writer.
    fn watch_hangup(&self, stream: &UnixStream, id: u64) {
        let Ok(reader) = stream.try_clone() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("guilocker-sub".into())
            .spawn(move || {
                let mut sink = [0u8; 256];
                let mut reader = reader;
                while std::io::Read::read(&mut reader, &mut sink).is_ok_and(|n| n > 0) {}
                unsubscribe(&inner, id);
            });
        if let Err(e) = spawned {
            log::warn!("cannot watch a subscriber: {e}");
        }
    }
}

fn write_all(mut stream: &UnixStream, frames: &Receiver<Frame>) {
    for frame in frames {
        if stream.write_all(&frame).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{read_frame, DeviceState};
    use std::io::BufReader;

    fn device(n: u64) -> DeviceInfo {
        owned(n, None)
    }

    fn owned(n: u64, owner: Option<&str>) -> DeviceInfo {
        serde_json::from_value(serde_json::json!({
            "device": format!("/dev/loop{n}"), "bitlocker": true, "state": "locked",
            "mountpoint": null, "decrypted": null, "label": null, "size_bytes": 1, "owner": owner,
        }))
        .unwrap()
    }

    /// A subscriber on a socket pair; returns its reader once it is subscribed.
    fn subscribe(bus: &Arc<Bus>) -> BufReader<UnixStream> {
        subscribe_as(bus, Sees::All)
    }

    fn subscribe_as(bus: &Arc<Bus>, sees: Sees) -> BufReader<UnixStream> {
        let (client, server) = UnixStream::pair().unwrap();
        let bus = Arc::clone(bus);
        std::thread::spawn(move || bus.serve(server, sees));
        let mut reader = BufReader::new(client);
        match read_frame::<Response, _>(&mut reader) {
            Ok(Some(Response::Subscribed)) => reader,
            other => panic!("expected subscribed, got {other:?}"),
        }
    }

    /// Events arrive numbered and in order; one subscriber that reads nothing fills its own
    /// queue and is dropped, while the emitter goes on and the subscriber that reads gets
    /// them all.
    #[test]
    fn a_subscriber_that_stops_reading_is_dropped_alone() {
        let bus = Arc::new(Bus::default());
        let mut reading = subscribe(&bus);
        let _stuck = subscribe(&bus);
        // Far more than the stuck one's queue and socket buffer hold.
        let (batches, batch) = (50, 100);
        let (read_tx, read_rx) = std::sync::mpsc::channel();
        let collector = std::thread::spawn(move || loop {
            match read_frame::<Response, _>(&mut reading) {
                Ok(Some(Response::Event { seq, device, event })) => {
                    assert_eq!(event, EventKind::Changed);
                    assert_eq!(device.state, DeviceState::Locked);
                    if read_tx.send(seq).is_err() {
                        return;
                    }
                }
                other => panic!("expected an event, got {other:?}"),
            }
        });
        let mut seqs = Vec::new();
        for _ in 0..batches {
            for n in 0..batch {
                bus.emit(EventKind::Changed, device(n));
            }
            // A reader that keeps up: a batch is read before the next is sent.
            seqs.extend(read_rx.iter().take(batch as usize));
        }
        assert!(seqs.iter().copied().eq(1..=batches * batch));
        assert_eq!(bus.inner().subscribers.len(), 1, "the stuck one is gone");
        drop(read_rx);
        drop(collector);
    }

    /// Someone outside the allowed group hears of their own volumes only.
    #[test]
    fn a_restricted_subscriber_hears_of_its_own_volumes_only() {
        let bus = Arc::new(Bus::default());
        let mut all = subscribe(&bus);
        let mut bob = subscribe_as(&bus, Sees::OwnedBy("bob".into()));
        bus.emit(EventKind::Changed, owned(1, Some("alice")));
        bus.emit(EventKind::Changed, owned(2, None));
        bus.emit(EventKind::Changed, owned(3, Some("bob")));
        let next = |r: &mut BufReader<UnixStream>| match read_frame::<Response, _>(r) {
            Ok(Some(Response::Event { device, seq, .. })) => (device.device, seq),
            other => panic!("expected an event, got {other:?}"),
        };
        for n in 1..=3 {
            assert_eq!(next(&mut all), (format!("/dev/loop{n}"), n));
        }
        assert_eq!(next(&mut bob), ("/dev/loop3".to_owned(), 3));
    }
}
