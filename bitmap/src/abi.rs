//! The control-device ABI of `kmod/dm-bdr.h`, byte for byte.
//!
//! Structs are `#[repr(C)]` with the header's field order; a unit test pins their sizes,
//! field offsets and the ioctl request numbers.

/// `BDR_ABI_VERSION`.
pub const BDR_ABI_VERSION: u32 = 1;
/// `BDR_CONTROL_NAME`: the misc device appears as `/dev/bdr-control`.
pub const BDR_CONTROL_NAME: &str = "bdr-control";
/// `BDR_ID_LEN`, including the terminating NUL.
pub const BDR_ID_LEN: usize = 64;
/// `BDR_IOC_MAGIC`.
pub const BDR_IOC_MAGIC: u8 = 0xBD;

/// `struct bdr_ioc_info`: id in, everything else out.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BdrIocInfo {
    pub id: [u8; BDR_ID_LEN],
    pub abi_version: u32,
    pub region_sectors: u32,
    pub generation: u64,
    pub dev_sectors: u64,
    pub nr_regions: u64,
    pub writes: u64,
    pub freezes: u64,
    pub active_regions: u64,
    pub frozen_regions: u64,
    pub users: u32,
    pub flags: u32,
}

/// `struct bdr_ioc_op`, for `BDR_IOC_FREEZE`, `BDR_IOC_ACK` and `BDR_IOC_MERGE`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BdrIocOp {
    pub id: [u8; BDR_ID_LEN],
    /// In: must match.
    pub generation: u64,
    /// Out: bits in the frozen bitmap afterwards.
    pub frozen_regions: u64,
}

/// `struct bdr_ioc_bits`, for `BDR_IOC_READ_FROZEN`, `BDR_IOC_READ_ACTIVE` and `BDR_IOC_LOAD`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BdrIocBits {
    pub id: [u8; BDR_ID_LEN],
    /// In: must match.
    pub generation: u64,
    /// In: first 64-bit word.
    pub start_word: u64,
    /// In: words to copy; `start_word + nr_words <= total`.
    pub nr_words: u64,
    /// In: user pointer to `nr_words` little-endian `u64`.
    pub buf: u64,
}

impl Default for BdrIocInfo {
    fn default() -> Self {
        BdrIocInfo {
            id: [0; BDR_ID_LEN],
            abi_version: 0,
            region_sectors: 0,
            generation: 0,
            dev_sectors: 0,
            nr_regions: 0,
            writes: 0,
            freezes: 0,
            active_regions: 0,
            frozen_regions: 0,
            users: 0,
            flags: 0,
        }
    }
}

/// Request numbers as the header's `_IOWR`/`_IOW` compute them (x86/arm64 encoding).
pub mod request {
    use super::*;
    use std::mem::size_of;

    pub const BDR_IOC_INFO: u64 =
        nix::request_code_readwrite!(BDR_IOC_MAGIC, 0, size_of::<BdrIocInfo>()) as u64;
    pub const BDR_IOC_FREEZE: u64 =
        nix::request_code_readwrite!(BDR_IOC_MAGIC, 1, size_of::<BdrIocOp>()) as u64;
    pub const BDR_IOC_ACK: u64 =
        nix::request_code_readwrite!(BDR_IOC_MAGIC, 2, size_of::<BdrIocOp>()) as u64;
    pub const BDR_IOC_MERGE: u64 =
        nix::request_code_readwrite!(BDR_IOC_MAGIC, 3, size_of::<BdrIocOp>()) as u64;
    pub const BDR_IOC_READ_FROZEN: u64 =
        nix::request_code_write!(BDR_IOC_MAGIC, 4, size_of::<BdrIocBits>()) as u64;
    pub const BDR_IOC_READ_ACTIVE: u64 =
        nix::request_code_write!(BDR_IOC_MAGIC, 5, size_of::<BdrIocBits>()) as u64;
    pub const BDR_IOC_LOAD: u64 =
        nix::request_code_write!(BDR_IOC_MAGIC, 6, size_of::<BdrIocBits>()) as u64;
}

// The ioctl wrappers. Each is `unsafe`: the caller guarantees `fd` is the control device and
// the pointed-to struct (and, for the bits calls, its `buf`) is valid for the call.
nix::ioctl_readwrite!(bdr_ioc_info, BDR_IOC_MAGIC, 0, BdrIocInfo);
nix::ioctl_readwrite!(bdr_ioc_freeze, BDR_IOC_MAGIC, 1, BdrIocOp);
nix::ioctl_readwrite!(bdr_ioc_ack, BDR_IOC_MAGIC, 2, BdrIocOp);
nix::ioctl_readwrite!(bdr_ioc_merge, BDR_IOC_MAGIC, 3, BdrIocOp);
nix::ioctl_write_ptr!(bdr_ioc_read_frozen, BDR_IOC_MAGIC, 4, BdrIocBits);
nix::ioctl_write_ptr!(bdr_ioc_read_active, BDR_IOC_MAGIC, 5, BdrIocBits);
nix::ioctl_write_ptr!(bdr_ioc_load, BDR_IOC_MAGIC, 6, BdrIocBits);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// `_IOC(dir, type, nr, size)` of `<asm-generic/ioctl.h>`: dir<<30 | size<<16 | type<<8 | nr,
    /// with _IOC_WRITE = 1, _IOC_READ = 2.
    fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
        (dir << 30) | (size << 16) | (ty << 8) | nr
    }

    #[test]
    fn struct_layout_matches_header() {
        // struct bdr_ioc_info: char id[64]; 2 x __u32; 7 x __u64; 2 x __u32.
        assert_eq!(size_of::<BdrIocInfo>(), 136);
        assert_eq!(align_of::<BdrIocInfo>(), 8);
        assert_eq!(offset_of!(BdrIocInfo, id), 0);
        assert_eq!(offset_of!(BdrIocInfo, abi_version), 64);
        assert_eq!(offset_of!(BdrIocInfo, region_sectors), 68);
        assert_eq!(offset_of!(BdrIocInfo, generation), 72);
        assert_eq!(offset_of!(BdrIocInfo, dev_sectors), 80);
        assert_eq!(offset_of!(BdrIocInfo, nr_regions), 88);
        assert_eq!(offset_of!(BdrIocInfo, writes), 96);
        assert_eq!(offset_of!(BdrIocInfo, freezes), 104);
        assert_eq!(offset_of!(BdrIocInfo, active_regions), 112);
        assert_eq!(offset_of!(BdrIocInfo, frozen_regions), 120);
        assert_eq!(offset_of!(BdrIocInfo, users), 128);
        assert_eq!(offset_of!(BdrIocInfo, flags), 132);

        assert_eq!(size_of::<BdrIocOp>(), 80);
        assert_eq!(offset_of!(BdrIocOp, id), 0);
        assert_eq!(offset_of!(BdrIocOp, generation), 64);
        assert_eq!(offset_of!(BdrIocOp, frozen_regions), 72);

        assert_eq!(size_of::<BdrIocBits>(), 96);
        assert_eq!(offset_of!(BdrIocBits, id), 0);
        assert_eq!(offset_of!(BdrIocBits, generation), 64);
        assert_eq!(offset_of!(BdrIocBits, start_word), 72);
        assert_eq!(offset_of!(BdrIocBits, nr_words), 80);
        assert_eq!(offset_of!(BdrIocBits, buf), 88);
    }

    #[test]
    fn request_numbers_match_header() {
        const RW: u64 = 3; // _IOC_READ | _IOC_WRITE
        const W: u64 = 1; // _IOC_WRITE
                          // By hand from the sizes above: 136 = 0x88, 80 = 0x50, 96 = 0x60.
        assert_eq!(ioc(RW, 0xBD, 0, 136), 0xC088_BD00);
        assert_eq!(ioc(RW, 0xBD, 1, 80), 0xC050_BD01);
        assert_eq!(ioc(W, 0xBD, 4, 96), 0x4060_BD04);

        assert_eq!(request::BDR_IOC_INFO, 0xC088_BD00);
        assert_eq!(request::BDR_IOC_FREEZE, 0xC050_BD01);
        assert_eq!(request::BDR_IOC_ACK, 0xC050_BD02);
        assert_eq!(request::BDR_IOC_MERGE, 0xC050_BD03);
        assert_eq!(request::BDR_IOC_READ_FROZEN, 0x4060_BD04);
        assert_eq!(request::BDR_IOC_READ_ACTIVE, 0x4060_BD05);
        assert_eq!(request::BDR_IOC_LOAD, 0x4060_BD06);

        let sizes = [136u64, 80, 80, 80, 96, 96, 96];
        let dirs = [RW, RW, RW, RW, W, W, W];
        let ours = [
            request::BDR_IOC_INFO,
            request::BDR_IOC_FREEZE,
            request::BDR_IOC_ACK,
            request::BDR_IOC_MERGE,
            request::BDR_IOC_READ_FROZEN,
            request::BDR_IOC_READ_ACTIVE,
            request::BDR_IOC_LOAD,
        ];
        for nr in 0..7 {
            assert_eq!(
                ours[nr],
                ioc(dirs[nr], 0xBD, nr as u64, sizes[nr]),
                "request {nr}"
            );
        }
    }
}
