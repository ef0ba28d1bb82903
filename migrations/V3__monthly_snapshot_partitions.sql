-- The chart history partitioned by month of fetched_at (UTC), so that old history is dropped a
-- month at a time (SNAPSHOT_RETENTION) instead of deleted row by row. The table keeps its
-- name, columns, primary key and index: the sink's upsert is the same statement.
--
-- A partition covers one UTC month and is named video_snapshots_pYYYY_MM; the sink creates
-- them (ahead of time, and for any month a record needs) and drops them by that name.

ALTER TABLE video_snapshots RENAME TO video_snapshots_unpartitioned;
ALTER INDEX video_snapshots_pkey RENAME TO video_snapshots_unpartitioned_pkey;
ALTER INDEX video_snapshots_video_idx RENAME TO video_snapshots_unpartitioned_video_idx;

CREATE TABLE video_snapshots (
    region_code    text        NOT NULL,
    fetched_at     timestamptz NOT NULL,
    video_id       text        NOT NULL,
    rank           integer     NOT NULL,
    view_count     bigint,
    like_count     bigint,
    comment_count  bigint,
    favorite_count bigint,
    PRIMARY KEY (region_code, fetched_at, video_id)
) PARTITION BY RANGE (fetched_at);

-- Rank history of one video (Grafana's trending dashboard), on every partition.
CREATE INDEX video_snapshots_video_idx ON video_snapshots (video_id, fetched_at);

-- A partition for each month the existing history covers, then the history moved into them.
DO $$
DECLARE
    month timestamp;  -- first instant of a UTC month
BEGIN
    FOR month IN
        SELECT DISTINCT date_trunc('month', fetched_at AT TIME ZONE 'UTC')
        FROM video_snapshots_unpartitioned
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF video_snapshots FOR VALUES FROM (%L) TO (%L)',
            'video_snapshots_p' || to_char(month, 'YYYY_MM'),
            to_char(month, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char(month + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00');
    END LOOP;
END $$;

INSERT INTO video_snapshots (region_code, fetched_at, video_id, rank, view_count, like_count,
    comment_count, favorite_count)
SELECT region_code, fetched_at, video_id, rank, view_count, like_count, comment_count,
    favorite_count
FROM video_snapshots_unpartitioned;

DROP TABLE video_snapshots_unpartitioned;
