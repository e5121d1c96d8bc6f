"""A small, valid record set for GE used by several tests (functions, not people)."""

GOOD_RECORDS = """\
member: GE
authorities:
  - id: pgo
    display_names:
      - {language: ka, text: "საქართველოს პროკურატურა"}
      - {language: en, text: "Prosecutor's Office of Georgia"}
    kind: prosecution-office
    address: {locality: Tbilisi, subdivision: GE-TB, country: GE}
    coverage: {national: true}
    competences:
      - request_types: [mla.hearing.witness, mla.general]
        roles: [COMPETENCE_ROLE_RECEIVES]
    languages: [ka, en, ru]
    office_hours: {time_zone: Asia/Tbilisi, opening_hours: "Mo-Fr 09:00-18:00"}
    urgent_contact: {description: "Duty desk", email: "duty@pgo.ge.example", always_available: true}
    review_date: "2026-11-01"
  - id: ajara
    display_names:
      - {language: ka, text: "აჭარის ავტონომიური რესპუბლიკის პროკურატურა"}
      - {language: en, text: "Prosecutor's Office of Ajara"}
    kind: prosecution-office
    parent: pgo
    coverage:
      subdivisions: [GE-AJ]
      municipalities:
        - names: [{language: ka, text: "ბათუმი"}, {language: en, text: Batumi}]
          subdivision: GE-AJ
    competences:
      - request_types: [mla.hearing.witness]
        roles: [COMPETENCE_ROLE_EXECUTES]
    languages: [ka]
contacts:
  - id: mla-desk
    display_names: [{language: en, text: "Mutual legal assistance desk"}]
    authority: pgo
    role: central-authority-desk
    email: "mla-desk@pgo.ge.example"
    visibility: VISIBILITY_PUBLIC
rules:
  - request_type: mla.hearing.witness
    possible: POSSIBILITY_YES
    receiving_authority: pgo
    executing_authority: ajara
    routes: [TRANSMISSION_ROUTE_CENTRAL_AUTHORITY]
    languages: [ka, en]
treaties:
  - instrument: untoc
    status: TREATY_STATUS_IN_FORCE
"""
