package dev.attune.lab.streams;

import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/** The state store's and the output topic's encoding of a {@link Profile}. */
final class ProfileSerde {
    private ProfileSerde() {}

    static Serde<Profile> serde() {
        Serializer<Profile> ser = (topic, profile) -> profile == null ? null : profile.encode();
        Deserializer<Profile> de = (topic, bytes) -> bytes == null ? null : Profile.decode(bytes);
        return Serdes.serdeFrom(ser, de);
    }
}
