//! Where the decoded DATA bytes go. Either straight to the spool (through the filter that
//! removes forged `Authentication-Results:` of ours), or held in memory for DKIM/DMARC, which
//! need the whole message, up to `max_verify_size`. Past that the held bytes are flushed and
//! the rest streams ([`MessageSink::spill`]): memory stays bounded per session.

use std::io;

use crate::sender_auth::strip::Stripper;
use crate::spool::SpoolWriter;

pub struct MessageSink {
    writer: SpoolWriter,
    stripper: Stripper,
    /// `Some` while holding: the bytes so far, and the bound.
    held: Option<(Vec<u8>, usize)>,
    scratch: Vec<u8>,
}

impl MessageSink {
    /// Streams to `writer`, removing A-R fields of `authserv_id`.
    pub fn streaming(writer: SpoolWriter, authserv_id: &str) -> MessageSink {
        MessageSink {
            writer,
            stripper: Stripper::new(authserv_id),
            held: None,
            scratch: Vec::new(),
        }
    }

    /// Holds up to `limit` bytes (a little more: one read's worth) before asking to spill.
    pub fn holding(writer: SpoolWriter, authserv_id: &str, limit: usize) -> MessageSink {
        let mut sink = MessageSink::streaming(writer, authserv_id);
        sink.held = Some((Vec::with_capacity(limit.min(64 * 1024)), limit));
        sink
    }

    pub fn id(&self) -> &str {
        self.writer.id()
    }

    /// Takes decoded message bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some((held, _)) = &mut self.held {
            held.extend_from_slice(bytes);
            return Ok(());
        }
        self.scratch.clear();
        self.stripper.feed(bytes, &mut self.scratch);
        self.writer.write(&self.scratch).await
    }

    /// Whether the held bytes passed the bound: the reader should stop and [`spill`] them.
    pub fn is_full(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|(held, limit)| held.len() > *limit)
    }

    /// Stops holding and returns the bytes held (the whole message once the data ended
    /// without a spill); what is written next streams.
    pub fn take_held(&mut self) -> Option<Vec<u8>> {
        self.held.take().map(|(held, _)| held)
    }

    /// Writes bytes of ours (trace and result fields) as they are, not filtered.
    pub async fn write_ours(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write(bytes).await
    }

    /// Stops holding: `prefix` (our fields), then the held bytes, filtered; what comes next
    /// streams.
    pub async fn spill(&mut self, prefix: &[u8]) -> io::Result<()> {
        let Some(held) = self.take_held() else {
            return Ok(());
        };
        self.writer.write(prefix).await?;
        self.write(&held).await
    }

    /// The end of the data: a last partial header line goes out.
    pub async fn finish(&mut self) -> io::Result<()> {
        self.scratch.clear();
        self.stripper.finish(&mut self.scratch);
        self.writer.write(&self.scratch).await
    }

    /// Forged fields removed so far.
    pub fn removed(&self) -> usize {
        self.stripper.removed()
    }

    pub fn into_writer(self) -> SpoolWriter {
        self.writer
    }
}
