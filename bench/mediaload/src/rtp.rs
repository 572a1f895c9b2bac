//! The generator's G.711 RTP packets: a 12-byte RTP header (V=2, PT 0,
//! seq/timestamp/SSRC of the sending endpoint) and 160 bytes of payload
//! that carry, after a magic, which step, call and direction the packet
//! belongs to, its own 32-bit sequence number and the realtime nanosecond
//! it was handed to the kernel.
//!
//! The stamp is in the payload, not the header, because a relay may
//! rewrite the header: trunkgate's relay sends with its own SSRC and
//! continues sequence numbers and timestamps across source changes.

/// RTP header length (no CSRC, no extension).
pub const HEADER_LEN: usize = 12;
/// 20 ms of G.711 at 8 kHz.
pub const PAYLOAD_LEN: usize = 160;
/// What goes on the wire.
pub const PACKET_LEN: usize = HEADER_LEN + PAYLOAD_LEN;
/// Timestamp units per packet (20 ms at 8000 Hz).
pub const TS_STEP: u32 = 160;
/// PCMU.
pub const PT_PCMU: u8 = 0;

const MAGIC: [u8; 4] = *b"MLd1";
const STAMP_LEN: usize = 28;

/// Which way a packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From the PBX-side endpoint to the phone-side endpoint.
    PbxToPhone = 0,
    /// From the phone-side endpoint to the PBX-side endpoint.
    PhoneToPbx = 1,
}

impl Dir {
    /// Both directions, in index order.
    pub const BOTH: [Dir; 2] = [Dir::PbxToPhone, Dir::PhoneToPbx];

    /// 0 or 1.
    pub fn index(self) -> usize {
        self as usize
    }

    fn from_byte(b: u8) -> Option<Dir> {
        match b {
            0 => Some(Dir::PbxToPhone),
            1 => Some(Dir::PhoneToPbx),
            _ => None,
        }
    }
}

/// What the payload says about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The step of the run (packets of an earlier step are stale).
    pub step: u32,
    /// The call's index within the step.
    pub call: u32,
    /// The direction.
    pub dir: Dir,
    /// The sender's packet counter (no wrap within a run).
    pub seq: u32,
    /// `CLOCK_REALTIME` ns when the packet was handed to `sendmmsg`.
    pub sent_ns: u64,
}

/// A received packet's header fields and stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// RTP payload type.
    pub pt: u8,
    /// RTP timestamp (as received; the relay may have offset it).
    pub ts: u32,
    /// The payload's stamp.
    pub stamp: Stamp,
}

/// Why a packet is not one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than a header plus the stamp.
    Short,
    /// RTP version is not 2.
    Version,
    /// The payload does not start with our magic.
    Magic,
    /// Direction byte out of range.
    Direction,
}

/// Writes a whole packet, stamp included, into `buf`.
pub fn write_packet(buf: &mut [u8; PACKET_LEN], ssrc: u32, ts: u32, marker: bool, stamp: &Stamp) {
    buf[0] = 0x80;
    buf[1] = PT_PCMU | if marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&(stamp.seq as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let p = &mut buf[HEADER_LEN..];
    p[0..4].copy_from_slice(&MAGIC);
    p[4..8].copy_from_slice(&stamp.step.to_be_bytes());
    p[8..12].copy_from_slice(&stamp.call.to_be_bytes());
    p[12] = stamp.dir as u8;
    p[13..16].fill(0);
    p[16..20].copy_from_slice(&stamp.seq.to_be_bytes());
    p[20..28].copy_from_slice(&stamp.sent_ns.to_be_bytes());
    // µ-law silence for the rest.
    p[STAMP_LEN..].fill(0xff);
}

/// Overwrites only the send time of a packet built by [`write_packet`]
/// (taken as late as possible, just before the batch is sent).
pub fn restamp(buf: &mut [u8; PACKET_LEN], sent_ns: u64) {
    buf[HEADER_LEN + 20..HEADER_LEN + 28].copy_from_slice(&sent_ns.to_be_bytes());
}

/// Reads a packet from the network; anything not ours is [`Malformed`].
pub fn read_packet(buf: &[u8]) -> Result<Received, Malformed> {
    let (Some(h), Some(p)) = (buf.get(..HEADER_LEN), buf.get(HEADER_LEN..HEADER_LEN + STAMP_LEN)) else {
        return Err(Malformed::Short);
    };
    if h[0] >> 6 != 2 {
        return Err(Malformed::Version);
    }
    if p[0..4] != MAGIC {
        return Err(Malformed::Magic);
    }
    let u32_at = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let dir = Dir::from_byte(p[12]).ok_or(Malformed::Direction)?;
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&p[20..28]);
    Ok(Received {
        pt: h[1] & 0x7f,
        ts: u32_at(h, 4),
        stamp: Stamp {
            step: u32_at(p, 4),
            call: u32_at(p, 8),
            dir,
            seq: u32_at(p, 16),
            sent_ns: u64::from_be_bytes(sent),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; PACKET_LEN];
        let stamp = Stamp { step: 3, call: 4001, dir: Dir::PhoneToPbx, seq: 70_000, sent_ns: 1_234_567_890_123 };
        write_packet(&mut buf, 0xdead_beef, 99 * 160, true, &stamp);
        restamp(&mut buf, 42);
        let r = read_packet(&buf).expect("ours");
        assert_eq!(r.pt, 0);
        assert_eq!(r.ts, 99 * 160);
        assert_eq!(r.stamp, Stamp { sent_ns: 42, ..stamp });
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 70_000u32 as u16);
        assert_eq!(buf[1], 0x80);
    }

    #[test]
    fn foreign_bytes_are_refused_not_panicked_on() {
        assert_eq!(read_packet(&[]), Err(Malformed::Short));
        assert_eq!(read_packet(&[0x80; 39]), Err(Malformed::Short));
        let mut buf = [0u8; PACKET_LEN];
        let stamp = Stamp { step: 0, call: 0, dir: Dir::PbxToPhone, seq: 0, sent_ns: 0 };
        write_packet(&mut buf, 1, 0, false, &stamp);
        let mut v1 = buf;
        v1[0] = 0x40;
        assert_eq!(read_packet(&v1), Err(Malformed::Version));
        let mut bad = buf;
        bad[HEADER_LEN] = b'X';
        assert_eq!(read_packet(&bad), Err(Malformed::Magic));
        let mut dir = buf;
        dir[HEADER_LEN + 12] = 7;
        assert_eq!(read_packet(&dir), Err(Malformed::Direction));
        // A truncated packet that still holds the stamp is accepted.
        assert!(read_packet(&buf[..HEADER_LEN + STAMP_LEN]).is_ok());
    }
}
