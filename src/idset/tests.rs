use super::*;
use proptest::prelude::*;

fn set(text: &str) -> IdSet {
    text.parse().unwrap()
}

#[test]
fn parses_libvirt_syntax() {
    assert_eq!(set("0-3,^2,8").iter().collect::<Vec<_>>(), [0, 1, 3, 8]);
    assert_eq!(set("0-7,^2-5").to_string(), "0-1,6-7");
    assert_eq!(set(" 1, 3 ,5-6\n").to_string(), "1,3,5-6");
    assert_eq!(set("").len(), 0);
    assert_eq!(set("\n").to_string(), "");
    assert_eq!(set("5,4,4,3").to_string(), "3-5");
    assert_eq!(set("63-65").to_string(), "63-65");
}

#[test]
fn rejects_malformed_lists_with_the_offending_part() {
    assert_eq!(
        "1,,2".parse::<IdSet>().unwrap_err(),
        IdSetError::EmptyElement("1,,2".into())
    );
    assert_eq!(
        "a-3".parse::<IdSet>().unwrap_err(),
        IdSetError::NotANumber("a".into())
    );
    assert_eq!(
        "4-2".parse::<IdSet>().unwrap_err(),
        IdSetError::Backwards(4, 2)
    );
    assert_eq!(
        "0-99999999999".parse::<IdSet>().unwrap_err(),
        IdSetError::TooLarge(99_999_999_999)
    );
    assert!("-1".parse::<IdSet>().is_err());
    assert!("1-".parse::<IdSet>().is_err());
    assert!("^".parse::<IdSet>().is_err());
    assert!("+1".parse::<IdSet>().is_err());
}

#[test]
fn set_operations() {
    let a = set("0-7");
    let b = set("4-11");
    assert_eq!(a.union(&b).to_string(), "0-11");
    assert_eq!(a.intersection(&b).to_string(), "4-7");
    assert_eq!(a.difference(&b).to_string(), "0-3");
    assert!(set("1-2").is_subset(&a));
    assert!(!b.is_subset(&a));
    assert!(a.intersects(&b));
    assert_eq!(a.intersection_len(&b), 4);
    assert!(!set("0").intersects(&set("200")));
    assert_eq!(set("3,130").last(), Some(130));
    assert_eq!(set("3,130").first(), Some(3));
    let mut c = set("64");
    c.remove(64);
    assert!(c.is_empty());
    assert_eq!(c, IdSet::new());
}

#[test]
fn bitmaps_use_libvirts_byte_layout() {
    // CPUs 0, 9 and 17: byte 0 bit 0, byte 1 bit 1, byte 2 bit 1.
    assert_eq!(set("0,9,17").to_bitmap_bytes(3), [0b1, 0b10, 0b10]);
    assert_eq!(set("0,9,17").to_bitmap_bytes(1), [0b1]);
    assert_eq!(
        IdSet::from_bitmap_bytes(&[0b1, 0b10, 0b10, 0, 0]),
        set("0,9,17")
    );
    assert_eq!(IdSet::from_bitmap_bytes(&[0; 4]), IdSet::new());
    assert_eq!(set("1,65").to_words(3), [0b10, 0b10, 0]);
}

#[test]
fn large_sets_spill_to_the_heap_and_compare_by_ids() {
    let big = set("0-1000");
    assert_eq!(big.len(), 1001);
    assert_eq!(big.last(), Some(1000));
    let small = big.difference(&set("64-1000"));
    assert_eq!(small, set("0-63"));
    assert_eq!(big.intersection(&set("500-520")).to_string(), "500-520");
    let mut grown = set("3");
    grown.union_with(&set("900"));
    grown.insert(700);
    assert_eq!(grown.to_string(), "3,700,900");
    assert_eq!(grown.iter().rev().collect::<Vec<_>>(), [900, 700, 3]);
    grown.subtract(&set("700-900"));
    assert_eq!(grown, set("3"));
    let hash = |s: &IdSet| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        s.hash(&mut h);
        h.finish()
    };
    assert_eq!(hash(&grown), hash(&set("3")));
}

proptest! {
    #[test]
    fn print_then_parse_round_trips(ids in proptest::collection::btree_set(0u32..2048, 0..200)) {
        let s: IdSet = ids.iter().copied().collect();
        let text = s.to_string();
        let back: IdSet = text.parse().unwrap();
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(back.iter().collect::<Vec<_>>(), ids.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn bitmap_bytes_round_trip(ids in proptest::collection::btree_set(0u32..1024, 0..100)) {
        let s: IdSet = ids.iter().copied().collect();
        prop_assert_eq!(IdSet::from_bitmap_bytes(&s.to_bitmap_bytes(128)), s);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,64}") {
        let _ = text.parse::<IdSet>();
    }

    #[test]
    fn exclusion_matches_set_difference(
        add in proptest::collection::btree_set(0u32..300, 1..40),
        del in proptest::collection::btree_set(0u32..300, 0..40),
    ) {
        let add_s: IdSet = add.iter().copied().collect();
        let del_s: IdSet = del.iter().copied().collect();
        let mut text = add_s.to_string();
        for d in &del {
            text.push_str(&format!(",^{d}"));
        }
        let parsed: IdSet = text.parse().unwrap();
        prop_assert_eq!(parsed, add_s.difference(&del_s));
    }
}
