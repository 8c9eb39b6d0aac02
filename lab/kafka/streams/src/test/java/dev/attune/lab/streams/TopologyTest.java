package dev.attune.lab.streams;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.TestInputTopic;
import org.apache.kafka.streams.TestOutputTopic;
import org.apache.kafka.streams.TopologyTestDriver;
import org.junit.jupiter.api.Test;

/** The benchmark's topology, run by Kafka Streams' test driver (no broker). */
class TopologyTest {
    static byte[] event(String id, String user, long ts, String kind, String item) {
        String json = "{\"v\":1,\"event_id\":\"" + id + "\",\"user\":\"" + user + "\",\"ts\":" + ts
                + ",\"kind\":\"" + kind + "\"" + (item == null ? "" : ",\"item\":\"" + item + "\"") + "}";
        return json.getBytes(StandardCharsets.UTF_8);
    }

    @Test
    void aggregates_each_users_events_into_their_profile() {
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, "topology-test");
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, "unused:9092");
        long t = ProfileTest.EPOCH_START;
        try (TopologyTestDriver driver =
                new TopologyTestDriver(StreamsBench.topology("events", "profiles"), props)) {
            TestInputTopic<String, byte[]> in =
                    driver.createInputTopic("events", new StringSerializer(), new ByteArraySerializer());
            TestOutputTopic<String, Profile> out = driver.createOutputTopic(
                    "profiles", new StringDeserializer(), ProfileSerde.serde().deserializer());
            in.pipeInput("u1", event("e1", "u1", t, "view", "a"));
            in.pipeInput("u2", event("e2", "u2", t, "purchase", "b"));
            in.pipeInput("u1", event("e3", "u1", t, "add_to_cart", "a"));
            in.pipeInput("u1", "not json".getBytes(StandardCharsets.UTF_8));

            Map<String, Profile> latest = out.readKeyValuesToMap();
            assertEquals(2, latest.size());
            assertArrayEquals(new long[] {4 * 65_536, 0}, latest.get("u1").items.get("a"));
            assertEquals(2, latest.get("u1").version);
            assertArrayEquals(new long[] {0, 5 * 65_536}, latest.get("u2").items.get("b"));
            // The store holds the same profile the topic got.
            Profile stored = driver.<String, Profile>getKeyValueStore("profiles").get("u1");
            assertEquals(2, stored.version);
        }
    }
}
