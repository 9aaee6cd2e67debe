//! # LAN9118 driver
//!
//! A driver for the SMSC LAN9118 Ethernet controller (the NIC of Arm's MPS2 boards and of QEMU's
//! `mps2-an505` model) implementing smoltcp's [`phy::Device`](smoltcp::phy::Device). No crate
//! for this chip exists, so Keel has its own; it is written from the LAN9118 datasheet and
//! QEMU's `hw/net/lan9118.c`.
//!
//! Data moves through the PIO FIFOs: one frame at a time, status word first. The controller's
//! interrupt line can be enabled for "received frame available" so the caller need not poll.
//! QEMU's model does no checksum offload, so smoltcp computes checksums in software (the
//! default capabilities).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

const RX_DATA: usize = 0x00;
const TX_DATA: usize = 0x20;
const RX_STATUS: usize = 0x40;
const TX_STATUS: usize = 0x48;
const ID_REV: usize = 0x50;
const IRQ_CFG: usize = 0x54;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5C;
const BYTE_TEST: usize = 0x64;
const TX_CFG: usize = 0x70;
const RX_FIFO_INF: usize = 0x7C;
const TX_FIFO_INF: usize = 0x80;
const MAC_CSR_CMD: usize = 0xA4;
const MAC_CSR_DATA: usize = 0xA8;

const INT_RSFL: u32 = 1 << 3; // RX status FIFO level reached (a frame is available)
const MTU: usize = 1514;
const BUF: usize = 1536;

/// Frame counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Frames received (good).
    pub rx: u32,
    /// Frames dropped because of receive errors or size.
    pub rx_errors: u32,
    /// Frames sent.
    pub tx: u32,
}

struct Regs(usize);

impl Regs {
    fn rd(&self, off: usize) -> u32 {
        // SAFETY: `Lan9118::new` obtained exclusive ownership of the register block at `self.0`.
        unsafe { core::ptr::read_volatile((self.0 + off) as *const u32) }
    }
    fn wr(&self, off: usize, v: u32) {
        // SAFETY: as in `rd`.
        unsafe { core::ptr::write_volatile((self.0 + off) as *mut u32, v) }
    }
    fn mac_read(&self, idx: u32) -> u32 {
        self.wr(MAC_CSR_CMD, 0xC000_0000 | idx);
        while self.rd(MAC_CSR_CMD) & 0x8000_0000 != 0 {}
        self.rd(MAC_CSR_DATA)
    }
    fn mac_write(&self, idx: u32, v: u32) {
        self.wr(MAC_CSR_DATA, v);
        self.wr(MAC_CSR_CMD, 0x8000_0000 | idx);
        while self.rd(MAC_CSR_CMD) & 0x8000_0000 != 0 {}
    }
}

/// The transmit half (kept apart so a receive token and a transmit token can coexist).
pub struct Tx {
    regs: Regs,
    buf: [u8; BUF],
    count: u32,
}

/// The driver.
pub struct Lan9118 {
    tx: Tx,
    rx: [u8; BUF],
    stats: Stats,
}

impl Lan9118 {
    /// Takes the controller at `base`, enables its MAC for transmit and receive, and returns
    /// `None` if no LAN9118 answers there.
    ///
    /// # Safety
    /// `base` must be the address of a LAN9118 register block that nothing else accesses for as
    /// long as the driver lives.
    pub unsafe fn new(base: usize) -> Option<Self> {
        let regs = Regs(base);
        if regs.rd(BYTE_TEST) != 0x8765_4321 || regs.rd(ID_REV) >> 16 != 0x0118 {
            return None;
        }
        regs.mac_write(1, (1 << 3) | (1 << 2) | (1 << 20)); // MAC_CR: TXEN | RXEN | FDPX
        regs.wr(TX_CFG, 1 << 1); // TX_ON
        Some(Lan9118 { tx: Tx { regs, buf: [0; BUF], count: 0 }, rx: [0; BUF], stats: Stats::default() })
    }

    /// The factory MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let l = self.tx.regs.mac_read(3);
        let h = self.tx.regs.mac_read(2);
        [l as u8, (l >> 8) as u8, (l >> 16) as u8, (l >> 24) as u8, h as u8, (h >> 8) as u8]
    }

    /// Asserts the controller's interrupt line while a received frame is waiting.
    pub fn enable_rx_interrupt(&self) {
        let r = &self.tx.regs;
        r.wr(INT_STS, u32::MAX);
        r.wr(INT_EN, INT_RSFL);
        r.wr(IRQ_CFG, (1 << 8) | (1 << 4) | 1); // IRQ_EN, push-pull, active high
    }

    /// Acknowledges the interrupt (call from its handler, before polling the stack).
    pub fn ack_interrupt(&self) {
        self.tx.regs.wr(INT_STS, INT_RSFL);
    }

    /// Frame counters.
    pub fn stats(&self) -> Stats {
        Stats { tx: self.tx.count, ..self.stats }
    }

    fn try_recv(&mut self) -> Option<usize> {
        let r = &self.tx.regs;
        while (r.rd(RX_FIFO_INF) >> 16) & 0xFF != 0 {
            let status = r.rd(RX_STATUS);
            let len = ((status >> 16) & 0x3FFF) as usize; // includes the 4-byte FCS
            for i in 0..len.div_ceil(4) {
                let w = r.rd(RX_DATA).to_le_bytes();
                for (j, b) in w.iter().enumerate() {
                    if let Some(slot) = self.rx.get_mut(i * 4 + j) {
                        *slot = *b;
                    }
                }
            }
            if status & (1 << 15) != 0 || !(18..=BUF).contains(&len) {
                self.stats.rx_errors += 1;
                continue;
            }
            self.stats.rx += 1;
            return Some(len - 4);
        }
        None
    }
}

impl Tx {
    fn send(&mut self, len: usize) {
        let r = &self.regs;
        // Drain the TX status FIFO so it never fills (QEMU stops recording at 512 entries).
        while (r.rd(TX_FIFO_INF) >> 16) & 0xFF != 0 {
            let _ = r.rd(TX_STATUS);
        }
        r.wr(TX_DATA, (1 << 13) | (1 << 12) | len as u32); // first + last segment, size
        r.wr(TX_DATA, (len as u32) << 16 | len as u32); // packet tag, packet length
        for chunk in self.buf[..len].chunks(4) {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            r.wr(TX_DATA, u32::from_le_bytes(w));
        }
        self.count += 1;
    }
}

/// Receive token: a frame already copied out of the FIFO.
pub struct Rx<'a>(&'a [u8]);
/// Transmit token.
pub struct TxTok<'a>(&'a mut Tx);

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let r = f(&mut self.0.buf[..len]);
        self.0.send(len);
        r
    }
}

impl Device for Lan9118 {
    type RxToken<'a>
        = Rx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a>
    where
        Self: 'a;

    fn receive(&mut self, _ts: Instant) -> Option<(Rx<'_>, TxTok<'_>)> {
        let n = self.try_recv()?;
        let Lan9118 { tx, rx, .. } = self;
        Some((Rx(&rx[..n]), TxTok(tx)))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<TxTok<'_>> {
        Some(TxTok(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = MTU;
        c.max_burst_size = Some(1);
        c
    }
}
