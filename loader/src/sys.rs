//! The loop-device ioctls: the only `unsafe` in the loader, because rustix
//! has no safe wrapper for them. Two calls, each on a file descriptor this
//! module opened, with arguments laid out as `<linux/loop.h>` defines them:
//! `LOOP_CTL_GET_FREE` on `/dev/loop-control` (no argument; the result is
//! the free device's number) and `LOOP_CONFIGURE` (Linux 5.8) on that
//! device (a pointer to a `struct loop_config` that lives across the call).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, Setter, ioctl};

const LOOP_CTL_GET_FREE: Opcode = 0x4C82;
const LOOP_CONFIGURE: Opcode = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// `LOOP_CTL_GET_FREE`: no argument, the device number as the result.
#[derive(Debug)]
struct GetFree;

// SAFETY: the opcode takes no argument (the pointer is null and unread)
// and returns the device number as the ioctl's result.
unsafe impl Ioctl for GetFree {
    type Output = u32;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE
    }

    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        core::ptr::null_mut()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut core::ffi::c_void) -> rustix::io::Result<u32> {
        u32::try_from(out).map_err(|_| rustix::io::Errno::RANGE)
    }
}

/// A loop device bound read-only to a file. It detaches itself when the
/// last user goes (autoclear): once the file system on it is mounted, this
/// handle may be dropped, and unmounting frees the device.
#[derive(Debug)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    _dev: File,
}

/// Binds `backing` (open read-only) to a free loop device, read-only.
pub fn attach_read_only(backing: &File, dev_dir: &std::path::Path) -> io::Result<LoopDevice> {
    let control_path = dev_dir.join("loop-control");
    if control_path.symlink_metadata().is_err() {
        // With loop built as a module and not loaded yet, devtmpfs has no
        // node for it (systemd makes these "static nodes"; a shell-init
        // initramfs may not). Opening the node, misc 10:237, makes the
        // kernel load the module (alias char-major-10-237).
        let _ = rustix::fs::mknodat(
            rustix::fs::CWD,
            &control_path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(10, 237),
        );
    }
    let control = OpenOptions::new().read(true).write(true).open(&control_path)?;
    // A device found free can be taken by someone else before we bind it
    // (EBUSY): ask again, a few times.
    let mut last = io::Error::from(io::ErrorKind::ResourceBusy);
    for _ in 0..8 {
        // SAFETY: GetFree passes no pointer; `control` is an open fd.
        let n = unsafe { ioctl(control.as_fd(), GetFree) }?;
        let path = dev_dir.join(format!("loop{n}"));
        let dev = OpenOptions::new().read(true).open(&path)?;
        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        let name = b"stateless-image";
        if let Some(dst) = info.lo_file_name.get_mut(..name.len()) {
            dst.copy_from_slice(name);
        }
        let fd = u32::try_from(backing.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let config = LoopConfig { fd, block_size: 0, info, reserved: [0; 8] };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which
        // Setter passes by pointer to `config` for the call's duration;
        // `dev` is an open loop device.
        let res = unsafe { ioctl(dev.as_fd(), Setter::<LOOP_CONFIGURE, LoopConfig>::new(config)) };
        match res {
            Ok(()) => return Ok(LoopDevice { path, _dev: dev }),
            Err(rustix::io::Errno::BUSY) => last = io::Error::from(rustix::io::Errno::BUSY),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structs_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
