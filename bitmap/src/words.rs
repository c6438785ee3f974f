//! Conversions between the kernel's bitmap layout (little-endian 64-bit words, region `r` is
//! bit `r % 64` of word `r / 64`) and [`RoaringBitmap`].

use roaring::RoaringBitmap;

/// Words per ioctl call / per chunk: 64 Ki words = 512 KiB of buffer = 4 Mi regions.
pub(crate) const CHUNK_WORDS: u64 = 64 * 1024;

/// The regions set in `bytes`, the little-endian words starting at word `start_word`.
///
/// Whole roaring containers are built straight from the bytes (no per-bit insertion), so
/// dense chunks cost about as much as sparse ones.
pub(crate) fn bytes_to_bitmap(start_word: u64, bytes: &[u8]) -> RoaringBitmap {
    debug_assert_eq!(bytes.len() % 8, 0);
    if bytes.iter().all(|&b| b == 0) {
        return RoaringBitmap::new();
    }
    let offset = u32::try_from(start_word * 64).expect("bitmap offset beyond 2^32 regions");
    RoaringBitmap::from_lsb0_bytes(offset, bytes)
}

/// Clears all bits `>= nr_regions`; returns whether any was set.
pub(crate) fn clear_tail(map: &mut RoaringBitmap, nr_regions: u64) -> bool {
    match map.max() {
        Some(max) if u64::from(max) >= nr_regions => {
            // nr_regions <= max < 2^32 here.
            map.remove_range(nr_regions as u32..);
            true
        }
        _ => false,
    }
}

/// Fails with the first region `>= nr_regions`, if any.
pub(crate) fn check_range(map: &RoaringBitmap, nr_regions: u64) -> Result<(), crate::Error> {
    match map.max() {
        Some(max) if u64::from(max) >= nr_regions => Err(crate::Error::OutOfRange {
            region: map
                .iter()
                .find(|&r| u64::from(r) >= nr_regions)
                .map_or(u64::from(max), u64::from),
            nr_regions,
        }),
        _ => Ok(()),
    }
}

/// Calls `f(start_word, bytes)` for each chunk of at most `chunk_words` words of `map` that
/// has a bit set, in order; `bytes` holds the chunk's words in little-endian order. All-zero
/// chunks are skipped (OR-ing them would change nothing). The bitmap must lie below
/// `total_words * 64`.
pub(crate) fn for_each_chunk<E>(
    map: &RoaringBitmap,
    total_words: u64,
    chunk_words: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk: Option<u64> = None; // index of the chunk in buf
    let chunk_bits = chunk_words * 64;
    for r in map.iter() {
        let r = u64::from(r);
        let c = r / chunk_bits;
        if chunk != Some(c) {
            if let Some(prev) = chunk {
                f(prev * chunk_words, &buf)?;
            }
            let start = c * chunk_words;
            let words = chunk_words.min(total_words - start);
            buf.clear();
            buf.resize((words * 8) as usize, 0);
            chunk = Some(c);
        }
        let bit = (r - c * chunk_bits) as usize;
        buf[bit / 8] |= 1 << (bit % 8);
    }
    if let Some(prev) = chunk {
        f(prev * chunk_words, &buf)?;
    }
    Ok(())
}

/// Number of bits set in `bytes`.
pub(crate) fn count_ones(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from(u64::from_le_bytes(w.try_into().unwrap()).count_ones()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words_to_bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn words_convert_both_ways() {
        let words = [1u64, 0, u64::MAX, 0x8000_0000_0000_0001];
        let map = bytes_to_bitmap(2, &words_to_bytes(&words));
        let mut expected: Vec<u32> = vec![128];
        expected.extend(256..320);
        expected.extend([320, 383]);
        assert_eq!(map.iter().collect::<Vec<_>>(), expected);

        let mut chunks = Vec::new();
        for_each_chunk(&map, 6, 2, |start, bytes| {
            chunks.push((start, bytes.to_vec()));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(
            chunks,
            vec![
                (2, words_to_bytes(&[1, 0])),
                (4, words_to_bytes(&[u64::MAX, 0x8000_0000_0000_0001])),
            ]
        );
    }

    #[test]
    fn last_chunk_is_short() {
        let map: RoaringBitmap = [0u32, 64 * 5 + 3].into_iter().collect();
        let mut chunks = Vec::new();
        for_each_chunk(&map, 6, 4, |start, bytes| {
            chunks.push((start, bytes.len()));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(chunks, vec![(0, 32), (4, 16)]);
    }

    #[test]
    fn round_trip_large_dense_and_sparse() {
        let mut map = RoaringBitmap::new();
        map.insert_range(1000..300_000);
        map.insert(5_000_000);
        map.insert(9_999_999);
        let total_words = 10_000_000u64.div_ceil(64);
        let mut back = RoaringBitmap::new();
        for_each_chunk(&map, total_words, CHUNK_WORDS, |start, bytes| {
            back |= bytes_to_bitmap(start, bytes);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(back, map);
        assert_eq!(count_ones(&words_to_bytes(&[u64::MAX, 5])), 66);
    }

    #[test]
    fn tail_and_range_checks() {
        let mut map: RoaringBitmap = [1u32, 99, 100, 200].into_iter().collect();
        assert!(matches!(
            check_range(&map, 100),
            Err(crate::Error::OutOfRange {
                region: 100,
                nr_regions: 100
            })
        ));
        assert!(clear_tail(&mut map, 100));
        assert_eq!(map.iter().collect::<Vec<_>>(), vec![1, 99]);
        assert!(check_range(&map, 100).is_ok());
        assert!(!clear_tail(&mut map, 100));
        let mut top: RoaringBitmap = [u32::MAX].into_iter().collect();
        assert!(check_range(&top, 1 << 32).is_ok());
        assert!(!clear_tail(&mut top, 1 << 32));
    }
}
