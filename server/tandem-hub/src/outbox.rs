//! The outbox: the bounded queue of frames from a doc actor to one connection.
//!
//! Every connection has one for its whole life, and it is empty most of that life. A tokio
//! `mpsc` channel allocates its first block of 32 slots and its cache-padded shared state up
//! front (about 1.5 KB a connection); this queue is a `VecDeque` behind a brief lock, which
//! allocates nothing until the first frame and gives a burst's memory back once drained.
//!
//! It behaves like the tokio channel it replaces:
//! - [`OutboxSender::try_send`] never waits: `Full` at capacity (the doc actor then closes the
//!   peer as a slow consumer), `Closed` once the receiver is gone.
//! - [`OutboxReceiver::recv`] returns every frame queued before the last sender was dropped,
//!   then `None` (the doc actor forgot the peer).
//! - `recv` is cancel safe: a `recv` dropped in a `select!` has taken nothing.
//!
//! The lock is held only to move one frame or to swap a waker, never across an `.await`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

/// Slots a drained queue may keep. A burst that grew it beyond this is freed once drained, so
/// a connection that once received a flood does not keep the flood's buffer.
const KEPT_CAPACITY: usize = 16;

/// Creates an outbox holding at most `capacity` frames.
pub(crate) fn outbox(capacity: usize) -> (OutboxSender, OutboxReceiver) {
    let shared = Arc::new(Shared {
        capacity,
        state: Mutex::new(State {
            frames: VecDeque::new(),
            n_senders: 1,
            receiver_gone: false,
            waker: None,
        }),
    });
    (OutboxSender(shared.clone()), OutboxReceiver(shared))
}

/// The doc actor's end; cloning it adds a sender.
pub(crate) struct OutboxSender(Arc<Shared>);

/// The connection's end.
pub(crate) struct OutboxReceiver(Arc<Shared>);

/// Why [`OutboxSender::try_send`] did not queue a frame (the frame is dropped).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError {
    /// The outbox holds `capacity` frames.
    Full,
    /// The connection is gone.
    Closed,
}

struct Shared {
    capacity: usize,
    state: Mutex<State>,
}

struct State {
    frames: VecDeque<Bytes>,
    n_senders: usize,
    receiver_gone: bool,
    /// The receiver's task, waiting in `recv` for a frame or the last sender's drop.
    waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held, and the state is valid after every step.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn pop(&mut self) -> Option<Bytes> {
        let frame = self.frames.pop_front()?;
        if self.frames.is_empty() && self.frames.capacity() > KEPT_CAPACITY {
            self.frames = VecDeque::new();
        }
        Some(frame)
    }
}

impl OutboxSender {
    /// Queues `frame` unless the outbox is full or its connection is gone.
    pub(crate) fn try_send(&self, frame: Bytes) -> Result<(), TrySendError> {
        let waker = {
            let mut state = self.0.lock();
            if state.receiver_gone {
                return Err(TrySendError::Closed);
            }
            if state.frames.len() >= self.0.capacity {
                return Err(TrySendError::Full);
            }
            state.frames.push_back(frame);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Clone for OutboxSender {
    fn clone(&self) -> OutboxSender {
        self.0.lock().n_senders += 1;
        OutboxSender(self.0.clone())
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.0.lock();
            state.n_senders -= 1;
            if state.n_senders == 0 {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl OutboxReceiver {
    /// The next frame; `None` once every sender is gone and every frame was taken.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next frame if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Bytes> {
        self.0.lock().pop()
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut state = self.0.lock();
        if let Some(frame) = state.pop() {
            return Poll::Ready(Some(frame));
        }
        if state.n_senders == 0 {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let frames = {
            let mut state = self.0.lock();
            state.receiver_gone = true;
            std::mem::take(&mut state.frames)
        };
        // Dropped outside the lock.
        drop(frames);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn frames_come_out_in_order_up_to_the_capacity() {
        let (tx, mut rx) = outbox(2);
        assert_eq!(tx.try_send(frame(1)), Ok(()));
        assert_eq!(tx.try_send(frame(2)), Ok(()));
        assert_eq!(tx.try_send(frame(3)), Err(TrySendError::Full));
        assert_eq!(rx.try_recv(), Some(frame(1)));
        assert_eq!(tx.try_send(frame(4)), Ok(()));
        assert_eq!(rx.try_recv(), Some(frame(2)));
        assert_eq!(rx.try_recv(), Some(frame(4)));
        assert_eq!(rx.try_recv(), None);
        drop(rx);
        assert_eq!(tx.try_send(frame(5)), Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn recv_drains_what_was_queued_before_the_last_sender_left() {
        let (tx, mut rx) = outbox(8);
        let other = tx.clone();
        tx.try_send(frame(1)).unwrap();
        drop(tx);
        other.try_send(frame(2)).unwrap();
        drop(other);
        assert_eq!(rx.recv().await, Some(frame(1)));
        assert_eq!(rx.recv().await, Some(frame(2)));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_recv_wakes_on_a_frame_and_on_the_last_drop() {
        let (tx, mut rx) = outbox(8);
        let reader = async {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        };
        let writer = async move {
            // Each step yields first, so the reader is already waiting when it happens.
            tokio::task::yield_now().await;
            tx.try_send(frame(7)).unwrap();
            tokio::task::yield_now().await;
            drop(tx);
        };
        let ((first, end), ()) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(reader, writer)
        })
        .await
        .expect("the reader is woken");
        assert_eq!((first, end), (Some(frame(7)), None));
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let (tx, mut rx) = outbox(1024);
        for n in 0..200 {
            tx.try_send(frame(n as u8)).unwrap();
        }
        assert!(rx.0.lock().frames.capacity() >= 200);
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.lock().frames.capacity(), 0);
        // A small queue keeps its buffer: steady traffic does not reallocate.
        tx.try_send(frame(1)).unwrap();
        rx.try_recv().unwrap();
        assert!(rx.0.lock().frames.capacity() > 0);
    }
}
