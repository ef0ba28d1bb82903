-- Which charts are whole in video_snapshots. A chart is one region's poll (region_code,
-- fetched_at); its records carry the chart's size (`chart_size`, added to the Avro schema with
-- this migration). The sink keeps each chart's row in the same transaction as the snapshots it
-- writes, so `complete` turns true exactly when the chart's last row is committed.
CREATE TABLE charts (
    region_code    text        NOT NULL,
    fetched_at     timestamptz NOT NULL,
    chart_size     integer,               -- videos in the chart; null for records older than the field
    videos_written integer     NOT NULL,  -- distinct videos of the chart in video_snapshots
    -- Null when the size is unknown: such a chart is neither complete nor counted incomplete.
    complete       boolean     GENERATED ALWAYS AS (videos_written >= chart_size) STORED,
    PRIMARY KEY (region_code, fetched_at)
);

-- The charts already stored, written before records said their size.
INSERT INTO charts (region_code, fetched_at, chart_size, videos_written)
SELECT region_code, fetched_at, NULL, count(*)
FROM video_snapshots
GROUP BY region_code, fetched_at;

-- The incomplete charts (the sink's `sink_charts_incomplete` gauge asks for them).
CREATE INDEX charts_incomplete_idx ON charts (fetched_at) WHERE NOT complete;
