package dev.attune.lab.streams;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.atomic.AtomicLong;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.state.Stores;

/**
 * Attune's per-user aggregation as a Kafka Streams application, and a benchmark of it.
 *
 * <p>Topology: {@code attune.events} (key = user, value = schema-v1 JSON) → group by key →
 * aggregate into a {@link Profile} held in a persistent (RocksDB) key-value store, whose
 * changelog topic makes it restorable → every updated profile to the output topic. One stream
 * thread, {@code processing.guarantee=exactly_once_v2}.
 *
 * <p>The benchmark starts a fresh application (new application id, empty state directory) on a
 * pre-filled topic, and stops once every event was processed and the group's committed offsets
 * reached the topic's end, that is once the transactions that hold the state changes, the
 * output and the offsets are committed. It prints one JSON line with the elapsed time and
 * events/s.
 *
 * <pre>
 * java -cp 'target/attune-streams-bench.jar:target/lib/*' dev.attune.lab.streams.StreamsBench \
 *     --bootstrap 127.0.0.1:9092 [--topic attune.events] [--output attune.streams.profiles]
 *     [--events N] [--timeout-s 900]
 * </pre>
 */
public final class StreamsBench {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final AtomicLong PROCESSED = new AtomicLong();
    private static final AtomicLong INVALID = new AtomicLong();
    private static final AtomicLong FIRST_NANOS = new AtomicLong();

    private StreamsBench() {}

    /** Parses one event and applies it; a value that is not a schema-v1 event is counted. */
    static Profile aggregate(byte[] value, Profile profile) {
        FIRST_NANOS.compareAndSet(0, System.nanoTime());
        try {
            JsonNode event = JSON.readTree(value);
            JsonNode kind = event.get("kind");
            JsonNode ts = event.get("ts");
            if (event.path("v").asInt() != 1 || kind == null || ts == null || !ts.canConvertToLong()) {
                INVALID.incrementAndGet();
            } else {
                JsonNode item = event.get("item");
                profile.apply(kind.asText(), item == null ? null : item.asText(), ts.asLong());
            }
        } catch (IOException e) {
            INVALID.incrementAndGet();
        }
        PROCESSED.incrementAndGet();
        return profile;
    }

    static Topology topology(String input, String output) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(input, Consumed.with(Serdes.String(), Serdes.ByteArray()))
                .groupByKey()
                .aggregate(
                        Profile::new,
                        (user, value, profile) -> aggregate(value, profile),
                        Materialized.<String, Profile>as(Stores.persistentKeyValueStore("profiles"))
                                .withKeySerde(Serdes.String())
                                .withValueSerde(ProfileSerde.serde()))
                .toStream()
                .to(output, Produced.with(Serdes.String(), ProfileSerde.serde()));
        return builder.build();
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = parseArgs(argv);
        String bootstrap = required(args, "bootstrap");
        String input = args.getOrDefault("topic", "attune.events");
        String output = args.getOrDefault("output", "attune.streams.profiles");
        long timeoutS = Long.parseLong(args.getOrDefault("timeout-s", "900"));
        String appId = args.getOrDefault("app-id", "attune-streams-bench-" + System.currentTimeMillis());
        Path stateDir = Files.createTempDirectory("attune-streams-state-");

        Map<TopicPartition, Long> ends;
        int partitions;
        long records;
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap))) {
            partitions = admin.describeTopics(List.of(input)).allTopicNames().get()
                    .get(input).partitions().size();
            Set<TopicPartition> tps = java.util.stream.IntStream.range(0, partitions)
                    .mapToObj(p -> new TopicPartition(input, p)).collect(Collectors.toSet());
            ends = offsets(admin, tps, OffsetSpec.latest());
            Map<TopicPartition, Long> begins = offsets(admin, tps, OffsetSpec.earliest());
            records = ends.entrySet().stream().mapToLong(e -> e.getValue() - begins.get(e.getKey())).sum();
            if (!admin.listTopics().names().get().contains(output)) {
                admin.createTopics(List.of(new NewTopic(output, partitions, (short) 1))).all().get();
            }
        }
        long events = Long.parseLong(args.getOrDefault("events", Long.toString(records)));
        if (events > records) {
            throw new IllegalArgumentException(
                    "--events " + events + " but " + input + " holds " + records + " records");
        }

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        KafkaStreams streams = new KafkaStreams(topology(input, output), props);
        long started = System.nanoTime();
        streams.start();
        long processedAt = 0;
        long committedAt = 0;
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap))) {
            long deadline = started + Duration.ofSeconds(timeoutS).toNanos();
            while (System.nanoTime() < deadline) {
                if (streams.state() == KafkaStreams.State.ERROR
                        || streams.state() == KafkaStreams.State.NOT_RUNNING) {
                    throw new IllegalStateException("Kafka Streams stopped: " + streams.state());
                }
                if (processedAt == 0 && PROCESSED.get() >= events) {
                    processedAt = System.nanoTime();
                }
                if (processedAt != 0 && committedUpTo(admin, appId, ends)) {
                    committedAt = System.nanoTime();
                    break;
                }
                Thread.sleep(processedAt == 0 ? 20 : 5);
            }
        } finally {
            streams.close(Duration.ofSeconds(60));
            streams.cleanUp();
            deleteRecursively(stateDir);
        }
        if (committedAt == 0) {
            throw new IllegalStateException("timed out after " + timeoutS + " s: processed "
                    + PROCESSED.get() + " of " + events + " events");
        }
        long first = FIRST_NANOS.get();
        double seconds = (committedAt - first) / 1e9;
        System.out.printf(
                "{\"engine\":\"kafka-streams\",\"events\":%d,\"processed\":%d,\"invalid\":%d,"
                        + "\"partitions\":%d,\"threads\":1,\"guarantee\":\"exactly_once_v2\",\"store\":\"rocksdb\","
                        + "\"seconds\":%.3f,\"events_per_s\":%.0f,\"processing_seconds\":%.3f,"
                        + "\"startup_seconds\":%.3f}%n",
                events, PROCESSED.get(),
                INVALID.get(), partitions, seconds, events / seconds, (processedAt - first) / 1e9,
                (first - started) / 1e9);
    }

    /** Whether the application's committed offsets reached `ends` on every partition. */
    private static boolean committedUpTo(Admin admin, String group, Map<TopicPartition, Long> ends)
            throws Exception {
        Map<TopicPartition, OffsetAndMetadata> committed =
                admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
        for (Map.Entry<TopicPartition, Long> end : ends.entrySet()) {
            OffsetAndMetadata c = committed.get(end.getKey());
            if (end.getValue() > 0 && (c == null || c.offset() < end.getValue())) {
                return false;
            }
        }
        return true;
    }

    private static Map<TopicPartition, Long> offsets(Admin admin, Set<TopicPartition> tps, OffsetSpec spec)
            throws Exception {
        Map<TopicPartition, OffsetSpec> request = new HashMap<>();
        tps.forEach(tp -> request.put(tp, spec));
        Map<TopicPartition, Long> out = new HashMap<>();
        admin.listOffsets(request).all().get().forEach((tp, info) -> out.put(tp, info.offset()));
        return out;
    }

    private static Map<String, String> parseArgs(String[] argv) {
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i < argv.length; i++) {
            if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
                throw new IllegalArgumentException("expected --name value pairs, got " + argv[i]);
            }
            args.put(argv[i].substring(2), argv[++i]);
        }
        return args;
    }

    private static String required(Map<String, String> args, String name) {
        String value = args.get(name);
        if (value == null) {
            throw new IllegalArgumentException("--" + name + " is required");
        }
        return value;
    }

    private static void deleteRecursively(Path dir) throws IOException {
        if (!Files.exists(dir)) {
            return;
        }
        try (var paths = Files.walk(dir)) {
            for (Path p : paths.sorted(java.util.Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(p);
            }
        }
    }
}
