//! Flash files of virtual devices: creation with factory data, programming app slots.
//!
//! The file is the device's whole 16 MiB flash. Host tools write it only while the device is not
//! running, as a factory programmer would.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use keel_flash::factory::Factory;
use keel_flash::layout::{self, Partition};

use crate::elf::AppImage;

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// New factory data with a random device id and key, not yet bound to a server.
pub fn new_factory() -> std::io::Result<Factory> {
    Ok(Factory {
        device_id: random_bytes()?,
        device_key: random_bytes()?,
        server_key: [0; 32],
        server_host: [0; 64],
        server_port: 0,
        signer_key: [0; 32],
    })
}

/// New factory data for a device that connects to `host:port` (an IPv4 address as seen from the
/// device; the host's loopback is 10.0.2.2 under QEMU user networking).
pub fn new_factory_for(host: &str, port: u16) -> std::io::Result<Factory> {
    let mut f = new_factory()?;
    if host.len() >= f.server_host.len() {
        return Err(std::io::Error::other("server host name too long"));
    }
    f.server_host[..host.len()].copy_from_slice(host.as_bytes());
    f.server_port = port;
    Ok(f)
}

/// Creates (or overwrites) a flash file: all erased, with `factory` in the factory partition.
pub fn create(path: &Path, factory: &Factory) -> std::io::Result<()> {
    let mut data = vec![0xFFu8; layout::FLASH_SIZE as usize];
    let rec = factory.to_bytes();
    data[..rec.len()].copy_from_slice(&rec);
    std::fs::write(path, data)
}

/// Reads the factory data of a flash file.
pub fn read_factory(path: &Path) -> std::io::Result<Factory> {
    let b = read_partition(path, layout::FACTORY)?;
    Factory::parse(&b).map_err(|e| std::io::Error::other(format!("no valid factory data in {}: {e:?}", path.display())))
}

/// Reads a whole partition.
pub fn read_partition(path: &Path, p: Partition) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(p.offset as u64))?;
    let mut b = vec![0u8; p.size as usize];
    f.read_exact(&mut b)?;
    Ok(b)
}

/// Erases `slot` and programs `app` into it.
pub fn program_app(path: &Path, slot: Partition, app: &AppImage) -> std::io::Result<()> {
    let bytes = app.slot_bytes();
    if bytes.len() > slot.size as usize {
        return Err(std::io::Error::other(format!(
            "app image ({} bytes) does not fit slot {} ({} bytes)",
            bytes.len(),
            slot.name,
            slot.size
        )));
    }
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    if len != layout::FLASH_SIZE as u64 {
        return Err(std::io::Error::other(format!("{} is not a 16 MiB flash file", path.display())));
    }
    f.seek(SeekFrom::Start(slot.offset as u64))?;
    f.write_all(&vec![0xFFu8; slot.size as usize])?;
    f.seek(SeekFrom::Start(slot.offset as u64))?;
    f.write_all(&bytes)?;
    f.sync_all()
}

/// Erases a whole partition (e.g. to remove the app).
pub fn erase(path: &Path, p: Partition) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(p.offset as u64))?;
    f.write_all(&vec![0xFFu8; p.size as usize])?;
    f.sync_all()
}

/// The updater for a virtual device's flash (the visor's layout and execution region).
pub fn updater() -> keel_update::Updater {
    keel_update::Updater::reference(keel_image::Target {
        exec_base: 0x0020_0000,
        exec_size: 0x0020_0000,
        slot_capacity: layout::APP_A.size - keel_image::HEADER_SIZE as u32,
        abi: (keel_abi::ABI_MAJOR, keel_abi::ABI_MINOR),
    })
}

/// Runs `f` on the flash file as a NOR device (the same rules as on the device) and writes the
/// result back.
pub fn with_nor<T>(
    path: &Path,
    f: impl FnOnce(&mut keel_flash::Nor<keel_flash::SliceMedium<'_>>) -> T,
) -> std::io::Result<T> {
    let mut data = std::fs::read(path)?;
    if data.len() != layout::FLASH_SIZE as usize {
        return Err(std::io::Error::other(format!("{} is not a 16 MiB flash file", path.display())));
    }
    let out = {
        let mut nor = keel_flash::Nor::new(keel_flash::SliceMedium(&mut data));
        f(&mut nor)
    };
    std::fs::write(path, data)?;
    Ok(out)
}

/// Installs `app` into the inactive slot as an update on trial, through the same install path
/// the visor runs for an over-the-air update (journal, page-wise download, digest check,
/// commit). The device runs it as a trial at its next boot.
pub fn stage_update(path: &Path, app: &AppImage, seq: u64, policy: keel_update::TrialPolicy) -> std::io::Result<()> {
    use sha2::{Digest, Sha256};
    let bytes = app.slot_bytes();
    let offer = keel_update::Offer { seq, digest: Sha256::digest(&bytes).into(), size: bytes.len() as u32, policy };
    let up = updater();
    with_nor(path, |nor| -> Result<(), keel_update::Error> {
        let mut dl = up.offer(nor, &offer)?;
        for chunk in bytes.chunks(768) {
            dl.write(&up, nor, chunk)?;
        }
        dl.finish(&up, nor)
    })?
    .map_err(|e| std::io::Error::other(format!("staging the update failed: {e:?}")))
}

/// The update state recorded in a flash file's journal.
pub fn update_state(path: &Path) -> std::io::Result<keel_update::UpdateState> {
    with_nor(path, |nor| updater().state(nor))?.map_err(|e| std::io::Error::other(format!("{e:?}")))
}
