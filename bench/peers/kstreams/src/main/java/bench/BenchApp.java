package bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Produced;

/**
 * The bench pipelines (bench/common.py) in Kafka Streams, the non-Python reference.
 *
 * <p>java -cp ... bench.BenchApp --bootstrap B --input IN --output OUT --group G --steps 1|3
 * --commit-interval 0.1
 *
 * <p>1-step: {id, user, total: amount * 1.2, note, ts}; 3-step: that, keep total >= 0, then
 * {id, gross: total, who: upper(user), ts}. JSON bytes in and out (Jackson), at-least-once,
 * one stream thread, Kafka Streams' defaults otherwise.
 */
public final class BenchApp {
  private static final ObjectMapper JSON = new ObjectMapper();

  private BenchApp() {}

  static JsonNode read(byte[] value) {
    try {
      return JSON.readTree(value);
    } catch (java.io.IOException e) {
      throw new IllegalArgumentException(e);
    }
  }

  static byte[] write(JsonNode node) {
    try {
      return JSON.writeValueAsBytes(node);
    } catch (java.io.IOException e) {
      throw new IllegalArgumentException(e);
    }
  }

  static JsonNode enrich(JsonNode v) {
    ObjectNode out = JSON.createObjectNode();
    out.set("id", v.get("id"));
    out.set("user", v.get("user"));
    out.put("total", v.get("amount").asDouble() * 1.2);
    out.set("note", v.get("note"));
    out.set("ts", v.get("ts"));
    return out;
  }

  static JsonNode shape(JsonNode v) {
    ObjectNode out = JSON.createObjectNode();
    out.set("id", v.get("id"));
    out.set("gross", v.get("total"));
    out.put("who", v.get("user").asText().toUpperCase());
    out.set("ts", v.get("ts"));
    return out;
  }

  public static void main(String[] argv) throws InterruptedException {
    Map<String, String> args = new HashMap<>();
    for (int i = 0; i + 1 < argv.length; i += 2) {
      args.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
    }
    int steps = Integer.parseInt(args.getOrDefault("steps", "1"));
    double commit = Double.parseDouble(args.getOrDefault("commit-interval", "0.1"));

    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, args.get("group"));
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Math.round(commit * 1000));
    props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
    props.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/kstreams-" + args.get("group"));

    StreamsBuilder builder = new StreamsBuilder();
    KStream<byte[], JsonNode> stream =
        builder.stream(args.get("input"), Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
            .mapValues(BenchApp::read)
            .mapValues(BenchApp::enrich);
    if (steps == 3) {
      stream = stream.filter((k, v) -> v.get("total").asDouble() >= 0).mapValues(BenchApp::shape);
    }
    stream.mapValues(BenchApp::write)
        .to(args.get("output"), Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));

    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    CountDownLatch done = new CountDownLatch(1);
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      streams.close();
      done.countDown();
    }));
    streams.start();
    done.await();
  }
}
