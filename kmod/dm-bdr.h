/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dm-bdr user-space ABI: the control device /dev/bdr-control.
 *
 * Every dirty bitmap is named by the <bitmap id> of the bdr table lines that
 * use it. Bitmaps are arrays of little-endian 64-bit words: region r is bit
 * (r % 64) of word (r / 64). Bits past the last region are always zero.
 *
 * Every call but BDR_IOC_INFO names the generation it expects; a bitmap that
 * was created anew since (module reload, last table removed) answers ESTALE,
 * so user space never mistakes a new, empty bitmap for the one it knew.
 *
 * Errors: ENOENT (no bitmap of that id), ESTALE (generation changed),
 * EINVAL (malformed request), EFAULT (bad user pointer).
 */
#ifndef _DM_BDR_H
#define _DM_BDR_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define BDR_ABI_VERSION		1
#define BDR_CONTROL_NAME	"bdr-control"
#define BDR_ID_LEN		64	/* including the terminating NUL */
#define BDR_IOC_MAGIC		0xBD

/* BDR_IOC_INFO: id in, everything else out. */
struct bdr_ioc_info {
	char id[BDR_ID_LEN];
	__u32 abi_version;	/* BDR_ABI_VERSION of the module */
	__u32 region_sectors;	/* region size in 512-byte sectors */
	__u64 generation;	/* never 0; new each time the bitmap is created */
	__u64 dev_sectors;	/* length of the target, in sectors */
	__u64 nr_regions;	/* DIV_ROUND_UP(dev_sectors, region_sectors) */
	__u64 writes;		/* write/discard/write-zeroes bios completed */
	__u64 freezes;		/* successful BDR_IOC_FREEZE calls */
	__u64 active_regions;	/* bits set in the active bitmap */
	__u64 frozen_regions;	/* bits set in the frozen bitmap */
	__u32 users;		/* table instances sharing this bitmap */
	__u32 flags;		/* reserved, 0 */
};

/* BDR_IOC_FREEZE, BDR_IOC_ACK, BDR_IOC_MERGE. */
struct bdr_ioc_op {
	char id[BDR_ID_LEN];
	__u64 generation;	/* in: must match */
	__u64 frozen_regions;	/* out: bits in the frozen bitmap afterwards */
};

/* BDR_IOC_READ_FROZEN, BDR_IOC_READ_ACTIVE, BDR_IOC_LOAD. */
struct bdr_ioc_bits {
	char id[BDR_ID_LEN];
	__u64 generation;	/* in: must match */
	__u64 start_word;	/* in: first 64-bit word */
	__u64 nr_words;		/* in: words to copy; start + nr <= total */
	__u64 buf;		/* in: user pointer to nr_words __u64 */
};

/* Geometry, counters and generation of one bitmap. */
#define BDR_IOC_INFO		_IOWR(BDR_IOC_MAGIC, 0, struct bdr_ioc_info)
/* Move active bits into the frozen bitmap (OR-merge), atomically per word. */
#define BDR_IOC_FREEZE		_IOWR(BDR_IOC_MAGIC, 1, struct bdr_ioc_op)
/* Drop the frozen bitmap: its regions have been replicated. */
#define BDR_IOC_ACK		_IOWR(BDR_IOC_MAGIC, 2, struct bdr_ioc_op)
/* OR the frozen bitmap back into the active one and clear it. */
#define BDR_IOC_MERGE		_IOWR(BDR_IOC_MAGIC, 3, struct bdr_ioc_op)
/* Copy words of the frozen bitmap out. */
#define BDR_IOC_READ_FROZEN	_IOW(BDR_IOC_MAGIC, 4, struct bdr_ioc_bits)
/* Copy words of the active bitmap out without clearing them. */
#define BDR_IOC_READ_ACTIVE	_IOW(BDR_IOC_MAGIC, 5, struct bdr_ioc_bits)
/* OR words from user space into the active bitmap (restore a saved map). */
#define BDR_IOC_LOAD		_IOW(BDR_IOC_MAGIC, 6, struct bdr_ioc_bits)

#endif /* _DM_BDR_H */
