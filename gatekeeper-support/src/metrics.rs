//! Prometheus metrics: values a daemon keeps (atomics, BPF counter snapshots) exposed through a
//! prometheus-client [`Collector`] in the Prometheus text format 0.0.4, and served on
//! `GET /metrics` by [`endpoint::serve`].
//!
//! Counters are described without their `_total` suffix; the encoder appends it, so the exposed
//! names (`gatekeeper_frames_total`, `smtp_relay_sessions_total`) are the ones dashboards use.

pub mod endpoint;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Encodes what `collector` reports now.
pub fn render(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut text = String::new();
    // Writing into a String cannot fail, and a collector only fails when its writer does.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

/// One counter without labels; `name` without `_total`.
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// One gauge without labels.
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// A counter with one series per label set; `name` without `_total`.
pub fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge with one series per label set.
pub fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, i64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A count as a gauge value (gauges are signed in the exposition).
pub fn gauge_value(count: impl TryInto<i64>) -> i64 {
    count.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Example;

    impl Collector for Example {
        fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
            counter(&mut encoder, "demo_sessions", "Sessions.", 3)?;
            counter_family(
                &mut encoder,
                "demo_refused",
                "Refusals by reason.",
                [([("reason", "a\"b\\c\nd")], 1)],
            )?;
            gauge(&mut encoder, "demo_depth", "Depth.", 2)?;
            gauge_family(
                &mut encoder,
                "demo_entries",
                "Entries.",
                [([("family", "ipv4")], 5)],
            )
        }
    }

    #[test]
    fn exposition_keeps_the_total_suffix_and_escapes_labels() {
        assert_eq!(
            render(Example),
            "# HELP demo_sessions_total Sessions.\n# TYPE demo_sessions_total counter\n\
             demo_sessions_total 3\n\
             # HELP demo_refused_total Refusals by reason.\n# TYPE demo_refused_total counter\n\
             demo_refused_total{reason=\"a\\\"b\\\\c\\nd\"} 1\n\
             # HELP demo_depth Depth.\n# TYPE demo_depth gauge\ndemo_depth 2\n\
             # HELP demo_entries Entries.\n# TYPE demo_entries gauge\n\
             demo_entries{family=\"ipv4\"} 5\n"
        );
        assert_eq!(gauge_value(u64::MAX), i64::MAX);
        assert_eq!(gauge_value(7usize), 7);
    }
}
