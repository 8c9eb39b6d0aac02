package dev.attune.lab.streams;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * One user's decayed item affinities: the part of Attune's {@code Profile::apply} (core/src/
 * profile.rs) that a stream processor's per-user aggregation does, with the same weights, half
 * lives, fixed-point scale and weekly epochs, so both sides do comparable work per event.
 *
 * <p>Scores are integer fixed-point sums relative to the start of the profile's epoch: an event
 * at {@code ts} adds {@code round(w * 65536 * 2^((ts - epochStart) / halfLife))}. Attune keeps
 * three buckets per score so late events fold in order-independently; this keeps one, which is
 * less work per event, not more.
 */
final class Profile {
    static final long DAY_MS = 86_400_000L;
    static final long EPOCH_MS = 7 * DAY_MS;
    static final double SCALE = 65_536.0;
    static final long SHORT_HALF_LIFE_MS = 3 * DAY_MS;
    static final long LONG_HALF_LIFE_MS = 60 * DAY_MS;
    /** The size budget: beyond this many items, the weakest is dropped. */
    static final int MAX_ITEMS = 24;

    int epoch;
    long version;
    long firstSeen;
    long lastSeen;
    /** item → {short, long} fixed-point scores relative to {@code epoch}'s start. */
    final Map<String, long[]> items = new HashMap<>();

    /**
     * Applies one schema-v1 event. Returns false for an event that leaves the profile alone
     * (impressions, searches: they name no item the profile scores).
     */
    boolean apply(String kind, String item, long ts) {
        double weight;
        boolean longClass = false;
        switch (kind) {
            case "view" -> weight = 1.0;
            case "click" -> weight = 1.5;
            case "add_to_cart" -> weight = 3.0;
            case "remove_from_cart" -> weight = -2.0;
            case "purchase" -> {
                weight = 5.0;
                longClass = true;
            }
            default -> {
                return false;
            }
        }
        int tsEpoch = (int) (ts / EPOCH_MS);
        if (version == 0) {
            epoch = tsEpoch;
            firstSeen = ts;
            lastSeen = ts;
        } else if (tsEpoch > epoch) {
            advance(tsEpoch);
        }
        version++;
        firstSeen = Math.min(firstSeen, ts);
        lastSeen = Math.max(lastSeen, ts);
        if (item == null) {
            return true;
        }
        long halfLife = longClass ? LONG_HALF_LIFE_MS : SHORT_HALF_LIFE_MS;
        long delta = ts - (long) epoch * EPOCH_MS;
        long contribution = Math.round(weight * SCALE * Math.pow(2.0, (double) delta / halfLife));
        long[] scores = items.computeIfAbsent(item, k -> new long[2]);
        scores[longClass ? 1 : 0] += contribution;
        if (items.size() > MAX_ITEMS) {
            dropWeakest();
        }
        return true;
    }

    /** Re-expresses every score relative to a later epoch's start. */
    private void advance(int to) {
        double steps = (double) (to - epoch) * EPOCH_MS;
        double shortFactor = Math.pow(2.0, -steps / SHORT_HALF_LIFE_MS);
        double longFactor = Math.pow(2.0, -steps / LONG_HALF_LIFE_MS);
        for (long[] s : items.values()) {
            s[0] = Math.round(s[0] * shortFactor);
            s[1] = Math.round(s[1] * longFactor);
        }
        epoch = to;
    }

    private void dropWeakest() {
        String weakest = null;
        long weakestScore = Long.MAX_VALUE;
        for (Map.Entry<String, long[]> e : items.entrySet()) {
            long score = e.getValue()[0] + e.getValue()[1];
            if (score < weakestScore || (score == weakestScore && e.getKey().compareTo(weakest) > 0)) {
                weakest = e.getKey();
                weakestScore = score;
            }
        }
        items.remove(weakest);
    }

    byte[] encode() {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream(32 + items.size() * 32);
        try (DataOutputStream out = new DataOutputStream(bytes)) {
            out.writeInt(epoch);
            out.writeLong(version);
            out.writeLong(firstSeen);
            out.writeLong(lastSeen);
            List<String> keys = new ArrayList<>(items.keySet());
            keys.sort(null);
            out.writeShort(keys.size());
            for (String key : keys) {
                long[] s = items.get(key);
                out.writeUTF(key);
                out.writeLong(s[0]);
                out.writeLong(s[1]);
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return bytes.toByteArray();
    }

    static Profile decode(byte[] data) {
        Profile p = new Profile();
        try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(data))) {
            p.epoch = in.readInt();
            p.version = in.readLong();
            p.firstSeen = in.readLong();
            p.lastSeen = in.readLong();
            int n = in.readShort();
            for (int i = 0; i < n; i++) {
                String key = in.readUTF();
                p.items.put(key, new long[] {in.readLong(), in.readLong()});
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return p;
    }
}
