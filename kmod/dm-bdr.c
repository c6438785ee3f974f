// SPDX-License-Identifier: GPL-2.0
/*
 * Copyright (C) 2026 The bdr authors.
 *
 * dm-bdr: an observational target for block-device replication.
 *
 * Every bio is remapped, unchanged, to one lower device. When a bio that
 * writes data (write, discard, write-zeroes, secure erase) completes, the
 * regions it touched are marked in an in-memory dirty bitmap. User space
 * freezes, reads, acknowledges or merges back that bitmap through the control
 * device /dev/bdr-control (see dm-bdr.h) and ships the dirty regions to a
 * replica. Nothing is ever written to disk by this target.
 *
 * This file is released under the GPL.
 */

#include <linux/device-mapper.h>

#include <linux/atomic.h>
#include <linux/bio.h>
#include <linux/ctype.h>
#include <linux/init.h>
#include <linux/log2.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "dm-bdr.h"

#define DM_MSG_PREFIX "bdr"

#define BDR_MIN_REGION_SECTORS	8		/* 4 KiB */
#define BDR_MAX_REGION_SECTORS	(1U << 21)	/* 1 GiB */
#define BDR_MAX_REGIONS		(1ULL << 32)	/* user space indexes regions by u32 */
#define BDR_BOUNCE_WORDS	64

/*
 * A dirty bitmap, named by its id and shared by every table instance that
 * names it, so that a table reload (onto a snapshot-origin and back) keeps
 * every bit. Only tables of the one mapped device that created it may share
 * it. Freed when the last table using it is destroyed.
 *
 * Invariants:
 * - @active is only changed with atomic operations: writers OR bits in from
 *   end_io without any lock; the control path swaps words out with xchg.
 *   A bit is therefore either still in @active or in @frozen, never lost.
 * - @frozen, @frozen_regions, @freezes, @users and the list of bitmaps are
 *   only touched under bdr_lock, which the I/O path never takes.
 * - Bits at or past @nr_regions are never set.
 */
struct bdr_map {
	struct list_head list;
	char id[BDR_ID_LEN];
	struct mapped_device *md;
	unsigned int users;
	u64 generation;
	sector_t dev_sectors;
	u32 region_sectors;
	unsigned int region_shift;
	u64 nr_regions;
	u64 nr_words;
	atomic64_t *active;
	u64 *frozen;
	u64 frozen_regions;
	u64 freezes;
	u64 __percpu *writes;
};

struct bdr_c {
	struct dm_dev *dev;
	struct bdr_map *map;
};

/* Saved at map time: the bio's own iterator has advanced by end_io. */
struct bdr_io {
	sector_t sector;
	unsigned int sectors;
};

static DEFINE_MUTEX(bdr_lock);
static LIST_HEAD(bdr_maps);

/* Bitmaps */

static struct bdr_map *bdr_map_find(const char *id)
{
	struct bdr_map *m;

	list_for_each_entry(m, &bdr_maps, list)
		if (!strcmp(m->id, id))
			return m;
	return NULL;
}

static void bdr_map_free(struct bdr_map *m)
{
	free_percpu(m->writes);
	kvfree(m->frozen);
	kvfree(m->active);
	kfree(m);
}

/* Called with bdr_lock held. */
static struct bdr_map *bdr_map_get(struct mapped_device *md, const char *id,
				   sector_t dev_sectors, u32 region_sectors,
				   char **error)
{
	struct bdr_map *m = bdr_map_find(id);

	if (m) {
		if (m->md != md) {
			*error = "Bitmap id is in use by another device";
			return ERR_PTR(-EBUSY);
		}
		if (m->dev_sectors != dev_sectors ||
		    m->region_sectors != region_sectors) {
			*error = "Bitmap id is in use with another length or region size";
			return ERR_PTR(-EBUSY);
		}
		m->users++;
		return m;
	}

	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		goto bad;
	strscpy(m->id, id, sizeof(m->id));
	m->md = md;
	m->users = 1;
	do {
		m->generation = get_random_u64();
	} while (!m->generation);
	m->dev_sectors = dev_sectors;
	m->region_sectors = region_sectors;
	m->region_shift = ilog2(region_sectors);
	m->nr_regions = DIV_ROUND_UP_SECTOR_T(dev_sectors, region_sectors);
	m->nr_words = DIV_ROUND_UP(m->nr_regions, 64);
	m->active = kvcalloc(m->nr_words, sizeof(*m->active), GFP_KERNEL);
	m->frozen = kvcalloc(m->nr_words, sizeof(*m->frozen), GFP_KERNEL);
	m->writes = alloc_percpu(u64);
	if (!m->active || !m->frozen || !m->writes) {
		bdr_map_free(m);
		goto bad;
	}
	list_add(&m->list, &bdr_maps);
	return m;
bad:
	*error = "Cannot allocate dirty bitmap";
	return ERR_PTR(-ENOMEM);
}

/* Called with bdr_lock held. */
static void bdr_map_put(struct bdr_map *m)
{
	if (--m->users)
		return;
	list_del(&m->list);
	bdr_map_free(m);
}

/*
 * Mark regions [first, last] in the active bitmap. Lock-free; a word whose
 * bits are already all set is only read, so hot regions cost no atomic write.
 */
static void bdr_mark(struct bdr_map *m, sector_t sector, unsigned int sectors)
{
	u64 first = sector >> m->region_shift;
	u64 last = (sector + sectors - 1) >> m->region_shift;
	u64 w;

	if (unlikely(last >= m->nr_regions))
		last = m->nr_regions - 1;
	for (w = first / 64; w <= last / 64; w++) {
		unsigned int lo = w == first / 64 ? first % 64 : 0;
		unsigned int hi = w == last / 64 ? last % 64 : 63;
		u64 mask = GENMASK_ULL(hi, lo);

		if ((atomic64_read(&m->active[w]) & mask) != mask)
			atomic64_or(mask, &m->active[w]);
	}
}

static u64 bdr_count_active(struct bdr_map *m)
{
	u64 w, n = 0;

	for (w = 0; w < m->nr_words; w++)
		n += hweight64(atomic64_read(&m->active[w]));
	return n;
}

static u64 bdr_count_writes(struct bdr_map *m)
{
	u64 n = 0;
	int cpu;

	for_each_possible_cpu(cpu)
		n += *per_cpu_ptr(m->writes, cpu);
	return n;
}

/*
 * Move every active bit into the frozen bitmap, OR-merging with bits frozen
 * earlier and not yet acknowledged. Each word is swapped out atomically, so a
 * concurrent write is either frozen now or stays active for the next freeze.
 * Called with bdr_lock held.
 */
static void bdr_freeze(struct bdr_map *m)
{
	u64 w, n = 0;

	for (w = 0; w < m->nr_words; w++) {
		if (atomic64_read(&m->active[w]))
			m->frozen[w] |= atomic64_xchg(&m->active[w], 0);
		n += hweight64(m->frozen[w]);
		if (!(w % 4096))
			cond_resched();
	}
	m->frozen_regions = n;
	m->freezes++;
}

/* Drop the frozen bitmap. Called with bdr_lock held. */
static void bdr_ack(struct bdr_map *m)
{
	memset(m->frozen, 0, m->nr_words * sizeof(*m->frozen));
	m->frozen_regions = 0;
}

/* OR the frozen bitmap back into the active one. Called with bdr_lock held. */
static void bdr_merge(struct bdr_map *m)
{
	u64 w;

	for (w = 0; w < m->nr_words; w++) {
		if (m->frozen[w])
			atomic64_or(m->frozen[w], &m->active[w]);
		if (!(w % 4096))
			cond_resched();
	}
	bdr_ack(m);
}

/* Target */

static bool bdr_valid_id(const char *id)
{
	size_t len = strlen(id);
	size_t i;

	if (!len || len >= BDR_ID_LEN)
		return false;
	for (i = 0; i < len; i++)
		if (!isalnum(id[i]) && !strchr("_.:-", id[i]))
			return false;
	return true;
}

/*
 * Construct a bdr mapping: <dev_path> <region_sectors> <bitmap_id>
 */
static int bdr_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	static const struct dm_arg _args[] = {
		{BDR_MIN_REGION_SECTORS, BDR_MAX_REGION_SECTORS, "Invalid region size"},
	};
	struct dm_arg_set as;
	const char *devname, *id;
	unsigned int region_sectors;
	struct bdr_c *bc;
	struct bdr_map *m;
	int r;

	if (argc != 3) {
		ti->error = "Invalid argument count: <dev_path> <region_sectors> <bitmap_id>";
		return -EINVAL;
	}
	as.argc = argc;
	as.argv = argv;
	devname = dm_shift_arg(&as);

	r = dm_read_arg(_args, &as, &region_sectors, &ti->error);
	if (r)
		return r;
	if (!is_power_of_2(region_sectors)) {
		ti->error = "Region size is not a power of two";
		return -EINVAL;
	}

	id = dm_shift_arg(&as);
	if (!bdr_valid_id(id)) {
		ti->error = "Invalid bitmap id: 1-63 characters of [A-Za-z0-9_.:-]";
		return -EINVAL;
	}

	if (ti->len < region_sectors) {
		ti->error = "Device is smaller than one region";
		return -EINVAL;
	}
	if (DIV_ROUND_UP_SECTOR_T(ti->len, region_sectors) > BDR_MAX_REGIONS) {
		ti->error = "Too many regions: use a larger region size";
		return -EINVAL;
	}

	bc = kzalloc(sizeof(*bc), GFP_KERNEL);
	if (!bc) {
		ti->error = "Cannot allocate bdr context";
		return -ENOMEM;
	}

	r = dm_get_device(ti, devname, dm_table_get_mode(ti->table), &bc->dev);
	if (r) {
		ti->error = "Device lookup failed";
		goto bad;
	}
	if (ti->len > bdev_nr_sectors(bc->dev->bdev)) {
		ti->error = "Target is longer than the device";
		r = -EINVAL;
		goto bad_put;
	}

	mutex_lock(&bdr_lock);
	m = bdr_map_get(dm_table_get_md(ti->table), id, ti->len,
			region_sectors, &ti->error);
	mutex_unlock(&bdr_lock);
	if (IS_ERR(m)) {
		r = PTR_ERR(m);
		goto bad_put;
	}
	bc->map = m;

	ti->num_flush_bios = 1;
	ti->num_discard_bios = 1;
	ti->num_secure_erase_bios = 1;
	ti->num_write_zeroes_bios = 1;
	ti->per_io_data_size = sizeof(struct bdr_io);
	ti->private = bc;
	return 0;

bad_put:
	dm_put_device(ti, bc->dev);
bad:
	kfree(bc);
	return r;
}

static void bdr_dtr(struct dm_target *ti)
{
	struct bdr_c *bc = ti->private;

	mutex_lock(&bdr_lock);
	bdr_map_put(bc->map);
	mutex_unlock(&bdr_lock);
	dm_put_device(ti, bc->dev);
	kfree(bc);
}

static int bdr_map(struct dm_target *ti, struct bio *bio)
{
	struct bdr_c *bc = ti->private;
	struct bdr_io *io = dm_per_bio_data(bio, sizeof(struct bdr_io));

	io->sectors = bio_sectors(bio);
	bio_set_dev(bio, bc->dev->bdev);
	if (io->sectors || op_is_zone_mgmt(bio_op(bio))) {
		io->sector = dm_target_offset(ti, bio->bi_iter.bi_sector);
		bio->bi_iter.bi_sector = io->sector;
	}
	return DM_MAPIO_REMAPPED;
}

/*
 * Mark on completion, not on submission: a freeze that runs while the device
 * is live must never clear a bit whose data has not reached the lower device.
 */
static int bdr_end_io(struct dm_target *ti, struct bio *bio, blk_status_t *error)
{
	struct bdr_c *bc = ti->private;
	struct bdr_io *io = dm_per_bio_data(bio, sizeof(struct bdr_io));

	if (io->sectors && op_is_write(bio_op(bio))) {
		bdr_mark(bc->map, io->sector, io->sectors);
		this_cpu_inc(*bc->map->writes);
	}
	return DM_ENDIO_DONE;
}

static void bdr_status(struct dm_target *ti, status_type_t type,
		       unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct bdr_c *bc = ti->private;
	struct bdr_map *m = bc->map;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		mutex_lock(&bdr_lock);
		DMEMIT("%016llx %u %llu %llu %llu %llu %llu", m->generation,
		       m->region_sectors, m->nr_regions, bdr_count_active(m),
		       m->frozen_regions, bdr_count_writes(m), m->freezes);
		mutex_unlock(&bdr_lock);
		break;

	case STATUSTYPE_TABLE:
		DMEMIT("%s %u %s", bc->dev->name, m->region_sectors, m->id);
		break;

	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",device_name=%s,region_sectors=%u;", bc->dev->name,
		       m->region_sectors);
		break;
	}
}

static int bdr_message(struct dm_target *ti, unsigned int argc, char **argv,
		       char *result, unsigned int maxlen)
{
	struct bdr_c *bc = ti->private;
	struct bdr_map *m = bc->map;
	unsigned int sz = 0;
	int r = 0;

	if (argc != 1) {
		DMERR("Invalid number of message arguments: freeze, ack or merge");
		return -EINVAL;
	}

	mutex_lock(&bdr_lock);
	if (!strcasecmp(argv[0], "freeze")) {
		bdr_freeze(m);
	} else if (!strcasecmp(argv[0], "ack")) {
		bdr_ack(m);
	} else if (!strcasecmp(argv[0], "merge")) {
		bdr_merge(m);
	} else {
		DMERR("Unrecognised message '%s': freeze, ack or merge", argv[0]);
		r = -EINVAL;
	}
	if (!r) {
		DMEMIT("%llu", m->frozen_regions);
		r = 1;	/* tells dm that @result holds a reply */
	}
	mutex_unlock(&bdr_lock);
	return r;
}

static int bdr_prepare_ioctl(struct dm_target *ti, struct block_device **bdev)
{
	struct bdr_c *bc = ti->private;

	*bdev = bc->dev->bdev;
	/* Only pass ioctls through if the device sizes match exactly. */
	return ti->len != bdev_nr_sectors(bc->dev->bdev);
}

static int bdr_iterate_devices(struct dm_target *ti,
			       iterate_devices_callout_fn fn, void *data)
{
	struct bdr_c *bc = ti->private;

	return fn(ti, bc->dev, 0, ti->len, data);
}

static struct target_type bdr_target = {
	.name = "bdr",
	.version = {1, 0, 0},
	.features = DM_TARGET_NOWAIT | DM_TARGET_PASSES_INTEGRITY |
		    DM_TARGET_PASSES_CRYPTO,
	.module = THIS_MODULE,
	.ctr = bdr_ctr,
	.dtr = bdr_dtr,
	.map = bdr_map,
	.end_io = bdr_end_io,
	.status = bdr_status,
	.message = bdr_message,
	.prepare_ioctl = bdr_prepare_ioctl,
	.iterate_devices = bdr_iterate_devices,
};

/* Control device */

/* Look up @id (NUL-terminated within BDR_ID_LEN) at @generation. */
static int bdr_ctl_find(const char *id, u64 generation, struct bdr_map **mp)
{
	struct bdr_map *m;

	if (strnlen(id, BDR_ID_LEN) == BDR_ID_LEN)
		return -EINVAL;
	m = bdr_map_find(id);
	if (!m)
		return -ENOENT;
	if (generation != m->generation)
		return -ESTALE;
	*mp = m;
	return 0;
}

static long bdr_ioc_info(struct bdr_ioc_info __user *uarg)
{
	struct bdr_ioc_info info;
	struct bdr_map *m;

	if (copy_from_user(info.id, uarg->id, sizeof(info.id)))
		return -EFAULT;
	if (strnlen(info.id, BDR_ID_LEN) == BDR_ID_LEN)
		return -EINVAL;

	mutex_lock(&bdr_lock);
	m = bdr_map_find(info.id);
	if (!m) {
		mutex_unlock(&bdr_lock);
		return -ENOENT;
	}
	memset(&info, 0, sizeof(info));
	strscpy(info.id, m->id, sizeof(info.id));
	info.abi_version = BDR_ABI_VERSION;
	info.region_sectors = m->region_sectors;
	info.generation = m->generation;
	info.dev_sectors = m->dev_sectors;
	info.nr_regions = m->nr_regions;
	info.writes = bdr_count_writes(m);
	info.freezes = m->freezes;
	info.active_regions = bdr_count_active(m);
	info.frozen_regions = m->frozen_regions;
	info.users = m->users;
	mutex_unlock(&bdr_lock);

	return copy_to_user(uarg, &info, sizeof(info)) ? -EFAULT : 0;
}

static long bdr_ioc_op(unsigned int cmd, struct bdr_ioc_op __user *uarg)
{
	struct bdr_ioc_op op;
	struct bdr_map *m;
	int r;

	if (copy_from_user(&op, uarg, sizeof(op)))
		return -EFAULT;

	mutex_lock(&bdr_lock);
	r = bdr_ctl_find(op.id, op.generation, &m);
	if (!r) {
		if (cmd == BDR_IOC_FREEZE)
			bdr_freeze(m);
		else if (cmd == BDR_IOC_ACK)
			bdr_ack(m);
		else
			bdr_merge(m);
		op.frozen_regions = m->frozen_regions;
	}
	mutex_unlock(&bdr_lock);
	if (r)
		return r;

	return put_user(op.frozen_regions, &uarg->frozen_regions);
}

/* Copy words out of, or OR words into, a bitmap through a small bounce buffer. */
static int bdr_ioc_bits_copy(unsigned int cmd, struct bdr_map *m,
			     struct bdr_ioc_bits *req)
{
	__le64 bounce[BDR_BOUNCE_WORDS];
	__le64 __user *ubuf = u64_to_user_ptr(req->buf);
	u64 done = 0, i, n, w;

	while (done < req->nr_words) {
		w = req->start_word + done;
		n = min_t(u64, req->nr_words - done, BDR_BOUNCE_WORDS);
		if (cmd == BDR_IOC_LOAD) {
			if (copy_from_user(bounce, ubuf + done, n * sizeof(bounce[0])))
				return -EFAULT;
			for (i = 0; i < n; i++)
				if (bounce[i])
					atomic64_or(le64_to_cpu(bounce[i]), &m->active[w + i]);
		} else {
			for (i = 0; i < n; i++)
				bounce[i] = cpu_to_le64(cmd == BDR_IOC_READ_FROZEN ?
							m->frozen[w + i] :
							atomic64_read(&m->active[w + i]));
			if (copy_to_user(ubuf + done, bounce, n * sizeof(bounce[0])))
				return -EFAULT;
		}
		done += n;
		cond_resched();
	}
	return 0;
}

/* A load must not set bits past the last region: check before touching anything. */
static int bdr_ioc_load_check(struct bdr_map *m, struct bdr_ioc_bits *req)
{
	__le64 __user *ubuf = u64_to_user_ptr(req->buf);
	u64 tail_bits = m->nr_regions % 64;
	__le64 last;

	if (!tail_bits || !req->nr_words ||
	    req->start_word + req->nr_words != m->nr_words)
		return 0;
	if (copy_from_user(&last, ubuf + req->nr_words - 1, sizeof(last)))
		return -EFAULT;
	return le64_to_cpu(last) & ~GENMASK_ULL(tail_bits - 1, 0) ? -EINVAL : 0;
}

static long bdr_ioc_bits(unsigned int cmd, struct bdr_ioc_bits __user *uarg)
{
	struct bdr_ioc_bits req;
	struct bdr_map *m;
	int r;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;

	mutex_lock(&bdr_lock);
	r = bdr_ctl_find(req.id, req.generation, &m);
	if (!r && (req.start_word > m->nr_words ||
		   req.nr_words > m->nr_words - req.start_word))
		r = -EINVAL;
	if (!r && cmd == BDR_IOC_LOAD)
		r = bdr_ioc_load_check(m, &req);
	if (!r)
		r = bdr_ioc_bits_copy(cmd, m, &req);
	mutex_unlock(&bdr_lock);
	return r;
}

static long bdr_ctl_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case BDR_IOC_INFO:
		return bdr_ioc_info(uarg);
	case BDR_IOC_FREEZE:
	case BDR_IOC_ACK:
	case BDR_IOC_MERGE:
		return bdr_ioc_op(cmd, uarg);
	case BDR_IOC_READ_FROZEN:
	case BDR_IOC_READ_ACTIVE:
	case BDR_IOC_LOAD:
		return bdr_ioc_bits(cmd, uarg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations bdr_ctl_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = bdr_ctl_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice bdr_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = BDR_CONTROL_NAME,
	.fops = &bdr_ctl_fops,
	.mode = 0600,
};

static int __init dm_bdr_init(void)
{
	int r;

	r = misc_register(&bdr_misc);
	if (r) {
		DMERR("misc_register failed %d", r);
		return r;
	}
	r = dm_register_target(&bdr_target);
	if (r < 0) {
		DMERR("register failed %d", r);
		misc_deregister(&bdr_misc);
	}
	return r;
}

static void __exit dm_bdr_exit(void)
{
	dm_unregister_target(&bdr_target);
	misc_deregister(&bdr_misc);
}

module_init(dm_bdr_init);
module_exit(dm_bdr_exit);

MODULE_DESCRIPTION(DM_NAME " observational dirty-region target for replication");
MODULE_AUTHOR("The bdr authors");
MODULE_LICENSE("GPL");
