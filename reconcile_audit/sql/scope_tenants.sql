-- When the extract finds nothing: does the scope exist at all? $1 is the tenant (NULL: every
-- tenant). Returns how many invoice rows of any status the scope has, and up to 11 tenant ids
-- the source knows, so the message can name them when there are few.
SELECT
    (SELECT count(*) FROM invoices WHERE CAST($1 AS TEXT) IS NULL OR tenant_id = CAST($1 AS TEXT))
        AS scope_rows,
    (SELECT string_agg(tenant_id, ', ' ORDER BY tenant_id)
     FROM (SELECT DISTINCT tenant_id FROM invoices WHERE tenant_id IS NOT NULL ORDER BY tenant_id LIMIT 11)
        AS known) AS known_tenants
