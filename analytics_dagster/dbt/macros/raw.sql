{#- The raw tables, on an account that has none of a resource yet.

    dlt creates a table with its first row: on a new account (no customers yet, no refund yet,
    no event in the stream's 90 days), a raw table the models read does not exist, and a model
    reading it would fail every build. So the models read a raw table through `raw(name)`: the
    source `analytics.<name>` itself where it exists, else an empty table of the columns
    sources.yml declares for it, `<models schema>.empty_raw_<name>`, which `create_empty_raw`
    (on-run-start) makes before any model runs (once, not in each of dbt's threads). The day dlt
    creates the raw table, the models read it, and the empty one is dropped. -#}

{% macro raw(name) -%}
    {{- return(raw_or_empty(source('analytics', name))) -}}
{%- endmacro %}

{#- The raw table `relation` itself, or its empty stand-in while it does not exist. -#}
{% macro raw_or_empty(relation) -%}
    {%- if execute and _missing(relation) -%}
        {{- return(_empty_raw(relation.identifier)) -}}
    {%- endif -%}
    {{- return(relation) -}}
{%- endmacro %}

{#- dbt's `relationships` test, its SQL as dbt writes it, but for the parent: a raw table the
    account has no row of yet is its empty stand-in (every child value then fails the test, as it
    should, rather than the test erroring). -#}
{% macro default__test_relationships(model, column_name, to, field) -%}
{%- set parent_relation = raw_or_empty(to) if execute else to %}
with child as (
    select {{ column_name }} as from_field
    from {{ model }}
    where {{ column_name }} is not null
),

parent as (
    select {{ field }} as to_field
    from {{ parent_relation }}
)

select
    from_field

from child
left join parent
    on child.from_field = parent.to_field

where parent.to_field is null
{%- endmacro %}

{% macro _missing(relation) -%}
    {{- return(adapter.get_relation(database=relation.database, schema=relation.schema,
                                    identifier=relation.identifier) is none) -}}
{%- endmacro %}

{% macro _empty_raw(name) -%}
    {{- return(api.Relation.create(database=target.database, schema=target.schema, identifier='empty_raw_' ~ name)) -}}
{%- endmacro %}

{#- on-run-start: for each raw table sources.yml declares columns of, its empty stand-in while
    the raw table is missing, none once it exists. -#}
{% macro create_empty_raw() -%}
    {%- if execute -%}
        {%- for node in graph.sources.values() if node.source_name == 'analytics' and node.columns -%}
            {%- set relation = api.Relation.create(database=node.database, schema=node.schema, identifier=node.identifier) -%}
            {%- set empty = _empty_raw(node.name) -%}
            {%- if _missing(relation) -%}
                {%- do adapter.create_schema(empty) -%}
                {%- do run_query("create table if not exists " ~ empty ~ " as select "
                    ~ _columns(node.columns.values()) ~ " where false") -%}
            {%- else -%}
                {%- do run_query("drop table if exists " ~ empty) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{% macro _columns(columns) -%}
    {%- set typed = [] -%}
    {%- for column in columns -%}
        {%- do typed.append("cast(null as " ~ raw_type(column.data_type) ~ ") as " ~ adapter.quote(column.name)) -%}
    {%- endfor -%}
    {{- return(typed | join(", ")) -}}
{%- endmacro %}

{#- A type of sources.yml (`text`, `json`, `timestamp`, `bool`, `bigint`) as dlt creates it in
    the warehouse: JSON is DuckDB's `json` and PostgreSQL's `jsonb`. -#}
{% macro raw_type(data_type) -%}
    {{- return(adapter.dispatch('raw_type')(data_type)) -}}
{%- endmacro %}

{% macro default__raw_type(data_type) -%}
    {{- return({'json': 'jsonb', 'timestamp': 'timestamp with time zone', 'bool': 'boolean'}.get(data_type, data_type)) -}}
{%- endmacro %}

{% macro duckdb__raw_type(data_type) -%}
    {{- return({'timestamp': 'timestamp with time zone', 'bool': 'boolean'}.get(data_type, data_type)) -}}
{%- endmacro %}
