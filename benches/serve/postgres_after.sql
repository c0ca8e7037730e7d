-- After the load: statistics and the visibility map, as a maintained table has them.
VACUUM ANALYZE bronze.readings;
