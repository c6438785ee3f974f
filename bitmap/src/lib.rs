//! Dirty-region bitmaps of the `bdr` device-mapper target.
//!
//! The kernel target `bdr` marks every region a completed write, discard or write-zeroes
//! touched in an in-memory *active* bitmap. User space periodically *freezes* it (the
//! active bits are OR-merged into a *frozen* bitmap and cleared), reads the frozen bitmap,
//! replicates those regions and *acknowledges* them (the frozen bitmap is dropped); if
//! replication fails it *merges* the frozen bits back into the active bitmap instead.
//! Every call names the [`Generation`] it expects, so a bitmap that was created anew
//! (module reload, last table removed) is never mistaken for the one user space knew.
//!
//! This crate knows only that bitmap:
//!
//! * [`DirtyMap`] — the operations, shared by both implementations;
//! * [`KernelDirtyMap`] — the real thing, through the control device `/dev/bdr-control`
//!   (ABI in `kmod/dm-bdr.h`, mirrored in [`abi`]);
//! * [`FileDirtyMap`] — a user-space stand-in backed by one file, for tests and
//!   development without the module;
//! * [`conformance`] — one test suite both implementations must pass.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::PathBuf;

pub mod abi;
pub mod conformance;
mod file;
mod kernel;
mod words;

pub use file::FileDirtyMap;
pub use kernel::{KernelDirtyMap, DEFAULT_CONTROL_PATH};
pub use roaring::RoaringBitmap;

/// Bytes per sector, the unit of [`Geometry::region_sectors`] and [`Geometry::dev_sectors`].
pub const SECTOR_SIZE: u64 = 512;

/// Largest supported number of regions: region numbers are `u32` in a [`RoaringBitmap`].
pub const MAX_REGIONS: u64 = 1 << 32;

/// What to do when the control device is missing.
pub const LOAD_MODULE_HINT: &str = "load the module: modprobe dm-bdr (or insmod kmod/dm-bdr.ko)";

/// Identity of one incarnation of a bitmap. Never 0; new each time the bitmap is created.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    /// 16 lower-case hex digits, e.g. `00000000deadbeef`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Shape of a bitmap: how the device is cut into regions.
///
/// Region `r` covers bytes `r * region_bytes() .. (r + 1) * region_bytes()`, the last one
/// clipped to the device size.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Geometry {
    /// Region size in 512-byte sectors; never 0.
    pub region_sectors: u32,
    /// Length of the device, in 512-byte sectors.
    pub dev_sectors: u64,
    /// `dev_sectors.div_ceil(region_sectors)`; at most [`MAX_REGIONS`].
    pub nr_regions: u64,
}

impl Geometry {
    /// The geometry of a device of `dev_sectors` sectors cut into regions of
    /// `region_sectors` sectors. Fails if the region size is 0 or there would be more than
    /// [`MAX_REGIONS`] regions.
    pub fn new(region_sectors: u32, dev_sectors: u64) -> Result<Geometry, Error> {
        let g = Geometry {
            region_sectors,
            dev_sectors,
            nr_regions: if region_sectors == 0 {
                0
            } else {
                dev_sectors.div_ceil(u64::from(region_sectors))
            },
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks the invariants documented on the fields.
    pub fn validate(&self) -> Result<(), Error> {
        let reason = if self.region_sectors == 0 {
            "region size is 0 sectors".to_string()
        } else if self.nr_regions != self.dev_sectors.div_ceil(u64::from(self.region_sectors)) {
            format!(
                "nr_regions {} is not dev_sectors {} / region_sectors {} rounded up",
                self.nr_regions, self.dev_sectors, self.region_sectors
            )
        } else if self.nr_regions > MAX_REGIONS {
            format!(
                "{} regions exceed the supported maximum of 2^32; use larger regions",
                self.nr_regions
            )
        } else {
            return Ok(());
        };
        Err(Error::InvalidGeometry { reason })
    }

    /// Region size in bytes.
    pub fn region_bytes(&self) -> u64 {
        u64::from(self.region_sectors) * SECTOR_SIZE
    }

    /// Device size in bytes.
    pub fn dev_bytes(&self) -> u64 {
        self.dev_sectors * SECTOR_SIZE
    }

    /// Number of 64-bit words of the bitmap: `nr_regions.div_ceil(64)`.
    pub fn nr_words(&self) -> u64 {
        self.nr_regions.div_ceil(64)
    }

    /// The region that holds byte `off` (not checked against the device size).
    pub fn region_of_byte(&self, off: u64) -> u64 {
        off / self.region_bytes()
    }

    /// The regions an I/O of `byte_len` bytes at `byte_off` touches; empty when `byte_len`
    /// is 0. Not clipped to the device: compare `end` with `nr_regions` to check.
    pub fn regions_for_range(&self, byte_off: u64, byte_len: u64) -> Range<u64> {
        let first = self.region_of_byte(byte_off);
        if byte_len == 0 {
            return first..first;
        }
        let last = self.region_of_byte(byte_off.saturating_add(byte_len - 1));
        first..last + 1
    }

    /// The bytes region `r` covers; the last region is clipped to the device size, regions
    /// past the end are empty.
    pub fn region_byte_range(&self, r: u64) -> Range<u64> {
        let dev = self.dev_bytes();
        let start = r.saturating_mul(self.region_bytes()).min(dev);
        let end = r
            .saturating_add(1)
            .saturating_mul(self.region_bytes())
            .min(dev);
        start..end
    }
}

/// State of one bitmap, as `BDR_IOC_INFO` reports it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MapInfo {
    /// The bitmap id of the table lines using it.
    pub id: String,
    pub geometry: Geometry,
    pub generation: Generation,
    /// Write, discard and write-zeroes bios completed since the bitmap was created.
    pub writes: u64,
    /// Successful freezes since the bitmap was created.
    pub freezes: u64,
    /// Bits set in the active bitmap.
    pub active_regions: u64,
    /// Bits set in the frozen bitmap.
    pub frozen_regions: u64,
    /// Table instances sharing the bitmap (always 1 for [`FileDirtyMap`]).
    pub users: u32,
}

/// The operations on one dirty bitmap. Every call but [`info`](DirtyMap::info) fails with
/// [`Error::Stale`] (and changes nothing) unless the bitmap is still of generation `g`.
pub trait DirtyMap: Send + Sync {
    /// Geometry, counters and generation.
    fn info(&self) -> Result<MapInfo, Error>;
    /// OR-merges the active bitmap into the frozen one and clears the active one, atomically
    /// per 64-bit word. Returns the number of bits in the frozen bitmap afterwards.
    fn freeze(&self, g: Generation) -> Result<u64, Error>;
    /// The frozen bitmap.
    fn read_frozen(&self, g: Generation) -> Result<RoaringBitmap, Error>;
    /// The active bitmap, without clearing it.
    fn read_active(&self, g: Generation) -> Result<RoaringBitmap, Error>;
    /// Drops the frozen bitmap: its regions have been replicated.
    fn ack(&self, g: Generation) -> Result<(), Error>;
    /// ORs the frozen bitmap back into the active one and clears the frozen one: its regions
    /// could not be replicated and must be sent again.
    fn merge_back(&self, g: Generation) -> Result<(), Error>;
    /// ORs `regions` into the active bitmap (restores a saved map). Fails with
    /// [`Error::OutOfRange`], changing nothing, if a region is `>= nr_regions`.
    fn load(&self, g: Generation, regions: &RoaringBitmap) -> Result<(), Error>;
}

/// Everything that can go wrong. Each message names the problem and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("control device {} does not exist: is the dm-bdr module loaded? {hint}", path.display())]
    NoControlDevice { path: PathBuf, hint: &'static str },

    #[error(
        "no bdr bitmap with id {id:?}: create a bdr device with that bitmap id \
         (dmsetup create ... bdr ... {id}) or check the id"
    )]
    NotFound { id: String },

    #[error(
        "bitmap {id:?} is no longer generation {expected} (now {}): it was created anew \
         (module reload or its last table removed) and the dirty regions it held are lost; \
         do a full resync of the device",
        found.map_or_else(|| "gone".to_string(), |g| g.to_string())
    )]
    Stale {
        id: String,
        expected: Generation,
        found: Option<Generation>,
    },

    #[error(
        "dm-bdr module speaks control ABI version {module}, this program version {ours}: \
         install matching versions of the module and bdr"
    )]
    AbiMismatch { module: u32, ours: u32 },

    #[error(
        "region {region} is outside the bitmap ({nr_regions} regions): \
         the saved map or I/O does not belong to this device geometry"
    )]
    OutOfRange { region: u64, nr_regions: u64 },

    #[error("invalid bitmap id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },

    #[error("invalid geometry: {reason}")]
    InvalidGeometry { reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "stand-in bitmap file {} is corrupt: {reason}; delete it and create it again \
         (its dirty regions are lost: do a full resync)",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_displays_16_hex_digits() {
        assert_eq!(Generation(0xdead_beef).to_string(), "00000000deadbeef");
        assert_eq!(Generation(u64::MAX).to_string(), "ffffffffffffffff");
    }

    #[test]
    fn geometry_partial_last_region() {
        // 64 KiB regions, 10 MiB + 3.5 KiB device: 160 full regions and a 3.5 KiB one.
        let g = Geometry::new(128, (10 << 20) / 512 + 7).unwrap();
        assert_eq!(g.region_bytes(), 65536);
        assert_eq!(g.nr_regions, 161);
        assert_eq!(g.nr_words(), 3);
        assert_eq!(g.region_byte_range(0), 0..65536);
        assert_eq!(g.region_byte_range(159), 159 * 65536..160 * 65536);
        assert_eq!(g.region_byte_range(160), (10 << 20)..(10 << 20) + 3584);
        assert_eq!(g.region_byte_range(161), g.dev_bytes()..g.dev_bytes());
        assert_eq!(g.regions_for_range(g.dev_bytes() - 512, 512), 160..161);
        assert_eq!(g.regions_for_range(0, g.dev_bytes()), 0..161);
    }

    #[test]
    fn geometry_4k_regions() {
        let g = Geometry::new(8, 1 << 21).unwrap(); // 1 GiB
        assert_eq!(g.region_bytes(), 4096);
        assert_eq!(g.nr_regions, 262_144);
        assert_eq!(g.region_of_byte(0), 0);
        assert_eq!(g.region_of_byte(4095), 0);
        assert_eq!(g.region_of_byte(4096), 1);
        assert_eq!(g.region_of_byte(8191), 1);
        assert_eq!(g.region_of_byte(8192), 2);
        assert_eq!(g.regions_for_range(4096, 4096), 1..2);
        assert_eq!(g.regions_for_range(4095, 2), 0..2);
        assert_eq!(g.regions_for_range(4096, 4097), 1..3);
        assert_eq!(g.regions_for_range(512, 512), 0..1);
        assert_eq!(g.regions_for_range(8192, 0), 2..2);
        assert!(g.regions_for_range(8192, 0).is_empty());
        assert_eq!(g.region_byte_range(262_143), (1 << 30) - 4096..1 << 30);
    }

    #[test]
    fn geometry_exact_multiple_has_no_partial_region() {
        let g = Geometry::new(128, 128 * 10).unwrap();
        assert_eq!(g.nr_regions, 10);
        assert_eq!(g.region_byte_range(9), 9 * 65536..10 * 65536);
        assert_eq!(g.regions_for_range(9 * 65536, 65536), 9..10);
    }

    #[test]
    fn geometry_rejects_bad_shapes() {
        assert!(matches!(
            Geometry::new(0, 100),
            Err(Error::InvalidGeometry { .. })
        ));
        assert!(Geometry::new(1, MAX_REGIONS).is_ok());
        assert!(matches!(
            Geometry::new(1, MAX_REGIONS + 1),
            Err(Error::InvalidGeometry { .. })
        ));
        let bad = Geometry {
            region_sectors: 8,
            dev_sectors: 80,
            nr_regions: 11,
        };
        assert!(bad.validate().is_err());
        assert_eq!(Geometry::new(8, 0).unwrap().nr_regions, 0);
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let e = Error::NoControlDevice {
            path: "/dev/bdr-control".into(),
            hint: LOAD_MODULE_HINT,
        };
        assert!(e.to_string().contains("modprobe dm-bdr"), "{e}");
        let e = Error::Stale {
            id: "x".into(),
            expected: Generation(1),
            found: None,
        };
        assert!(e.to_string().contains("full resync"), "{e}");
        assert!(e.to_string().contains("0000000000000001"), "{e}");
    }
}
