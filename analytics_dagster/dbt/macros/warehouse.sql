{#- What differs between the warehouses beyond JSON arrays (json.sql): each macro says where. -#}

{#- `expr` (text) ordered byte by byte, as DuckDB orders text. PostgreSQL orders text by the
    database's collation (a locale's may rank characters otherwise); "C" is byte order. -#}
{% macro byte_order(expr) -%}
    {{ return(adapter.dispatch('byte_order')(expr)) }}
{%- endmacro %}

{% macro default__byte_order(expr) -%}
    {{ expr }} collate "C"
{%- endmacro %}

{% macro duckdb__byte_order(expr) -%}
    {{ expr }}
{%- endmacro %}

{#- on-run-start: the models' days and months are UTC's, and dates are cut from timestamps (and
    `current_date` taken) in the session's time zone. DuckDB's is set by profiles.yml
    (settings.TimeZone); PostgreSQL's comes from the connection (the asset sets PGTZ=UTC), else
    the server's default: a session whose offset from UTC is not 0 all year fails the run here,
    before anything is built. -#}
{% macro assert_session_time_zone_is_utc() -%}
    {{ return(adapter.dispatch('assert_session_time_zone_is_utc')()) }}
{%- endmacro %}

{% macro default__assert_session_time_zone_is_utc() -%}
    {%- if execute -%}
        {%- set probe = run_query("select current_setting('TimeZone') as zone, "
            ~ "extract(timezone from date_trunc('year', now())) = 0 "
            ~ "and extract(timezone from date_trunc('year', now()) + interval '6 months') = 0 as utc") -%}
        {%- if not probe.columns[1].values()[0] -%}
            {{ exceptions.raise_compiler_error("the session's time zone is " ~ probe.columns[0].values()[0]
                ~ ", not UTC: the models' days and months are UTC's. Set PGTZ=UTC in dbt's environment "
                ~ "(the Dagster asset does), or the database's timezone to UTC") }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}

{% macro duckdb__assert_session_time_zone_is_utc() -%}
{%- endmacro %}

{#- Whether the text `expr` is an RFC 3339 timestamp, as the sync reads one
    (analytics_dagster/rfc3339.py): date, `T` (or t, or a space), time, up to 9 fractional
    digits, `Z` or an offset. Not a leap second (`:60`): neither warehouse casts one, and a
    state placed there would fail every build (the sync applies such an event; the history
    skips it). -#}
{% macro is_rfc3339(expr) -%}
    {%- set pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-5][0-9]([.][0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$" -%}
    {{ matches(expr, pattern) }}
{%- endmacro %}

{#- Whether the text `expr` matches the regular expression `pattern` (false for null). -#}
{% macro matches(expr, pattern) -%}
    {{ return(adapter.dispatch('matches')(expr, pattern)) }}
{%- endmacro %}

{% macro default__matches(expr, pattern) -%}
    coalesce({{ expr }} ~ '{{ pattern }}', false)
{%- endmacro %}

{% macro duckdb__matches(expr, pattern) -%}
    coalesce(regexp_matches({{ expr }}, '{{ pattern }}'), false)
{%- endmacro %}

{#- How long the payment terms `terms` (a transaction's `billing_details.payment_terms`: an
    `interval`, day, week, month or year, and a whole `frequency`) give to pay, as an interval;
    null if they say none. -#}
{% macro payment_terms(terms) -%}
    case when {{ matches(terms ~ "->>'frequency'", '^[0-9]{1,4}$') }}
         then cast({{ terms }}->>'frequency' as integer)
              * case {{ terms }}->>'interval' when 'day' then interval '1 day' when 'week' then interval '7 days'
                     when 'month' then interval '1 month' when 'year' then interval '1 year' end end
{%- endmacro %}

{#- The RFC 3339 text `expr` (one `is_rfc3339` accepts) as a timestamp with time zone: upper-cased
    first, as RFC 3339 allows a lower-case `t` and `z` and DuckDB's cast does not. -#}
{% macro rfc3339_timestamp(expr) -%}
    cast(upper({{ expr }}) as timestamptz)
{%- endmacro %}
