package dev.attune.lab.streams;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class ProfileTest {
    /** The start of some weekly epoch. */
    static final long EPOCH_START = 2_800L * Profile.EPOCH_MS;

    @Test
    void weights_and_decay_classes_match_the_core_defaults() {
        Profile p = new Profile();
        assertTrue(p.apply("view", "a", EPOCH_START));
        assertTrue(p.apply("click", "a", EPOCH_START));
        assertTrue(p.apply("purchase", "b", EPOCH_START));
        assertTrue(p.apply("remove_from_cart", "c", EPOCH_START));
        assertArrayEquals(new long[] {65_536 + 98_304, 0}, p.items.get("a"));
        assertArrayEquals(new long[] {0, 5 * 65_536}, p.items.get("b"));
        assertArrayEquals(new long[] {-2 * 65_536, 0}, p.items.get("c"));
        assertEquals(4, p.version);
    }

    @Test
    void a_half_life_later_counts_twice_relative_to_the_epoch() {
        Profile p = new Profile();
        p.apply("view", "a", EPOCH_START);
        p.apply("view", "a", EPOCH_START + Profile.SHORT_HALF_LIFE_MS);
        assertEquals(65_536 + 131_072, p.items.get("a")[0]);
    }

    @Test
    void a_new_epoch_rescales_older_scores() {
        Profile p = new Profile();
        p.apply("view", "a", EPOCH_START);
        p.apply("view", "b", EPOCH_START + Profile.EPOCH_MS);
        // 2^(-7 days / 3 days) of 65,536.
        assertEquals(Math.round(65_536 * Math.pow(2, -7.0 / 3.0)), p.items.get("a")[0]);
        assertEquals(65_536, p.items.get("b")[0]);
        assertEquals(2_801, p.epoch);
    }

    @Test
    void impressions_and_searches_change_nothing() {
        Profile p = new Profile();
        assertFalse(p.apply("impression", "a", EPOCH_START));
        assertFalse(p.apply("search", null, EPOCH_START));
        assertEquals(0, p.version);
        assertTrue(p.items.isEmpty());
    }

    @Test
    void the_budget_drops_the_weakest_item() {
        Profile p = new Profile();
        for (int i = 0; i < Profile.MAX_ITEMS; i++) {
            p.apply("click", "strong" + i, EPOCH_START);
        }
        p.apply("view", "weak", EPOCH_START);
        assertEquals(Profile.MAX_ITEMS, p.items.size());
        assertFalse(p.items.containsKey("weak"));
    }

    @Test
    void encoding_round_trips() {
        Profile p = new Profile();
        p.apply("view", "a", EPOCH_START + 5);
        p.apply("purchase", "b", EPOCH_START + 9);
        Profile q = Profile.decode(p.encode());
        assertEquals(p.epoch, q.epoch);
        assertEquals(p.version, q.version);
        assertEquals(p.firstSeen, q.firstSeen);
        assertEquals(p.lastSeen, q.lastSeen);
        assertEquals(p.items.keySet(), q.items.keySet());
        p.items.forEach((k, v) -> assertArrayEquals(v, q.items.get(k)));
    }
}
