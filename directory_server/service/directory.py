"""counterpart.v1.DirectoryService: decodes requests, calls lookup.Directory, encodes answers."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart.v1 import records_pb2
from counterpart_core.names import parse_member_name
from counterpart_core.records import Record
from directory_server.asof import AsOfViews, requested
from directory_server.lookup import Directory
from directory_server.service.errors import handle_errors
from directory_server.service.identity import current

R = TypeVar("R", records_pb2.Authority, records_pb2.Contact, records_pb2.Rule, records_pb2.Treaty, records_pb2.Place)


def _typed(kind: type[R], record: Record) -> R:
    """The record as the type the response field needs (lookup returned it for that kind)."""
    if not isinstance(record, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(record).__name__}")
    return record


class DirectoryServicer(ds_grpc.DirectoryServiceServicer):
    """``raw_answers`` (set by ``add_to_server``): FindCounterpart returns its answer's bytes,
    which the method's serializer sends as they are; otherwise the message."""

    def __init__(self, directory: Directory) -> None:
        self.d = directory
        self.views = AsOfViews(directory.store, directory.federation, directory.clock)
        self.raw_answers = False

    def _at(self, request: Message) -> tuple[Directory, ds.AsOf | None]:
        """The directory that answers a request: the current one, or the view of the instant
        its ``as_of`` asks for (and the AsOf the response then states)."""
        if not request.HasField("as_of"):
            return self.d, None
        as_of: ds.AsOf = getattr(request, "as_of")  # noqa: B009 - every Get/List/Search request has one
        instant = requested(as_of, self.d.clock())
        return self.views.view(instant), instant.message()

    @handle_errors
    def GetAuthority(self, request: ds.GetAuthorityRequest, context: grpc.ServicerContext) -> ds.GetAuthorityResponse:
        d, as_of = self._at(request)
        loaded, prov = d.get(request.name, "authorities", current())
        return ds.GetAuthorityResponse(authority=_typed(records_pb2.Authority, loaded.record), proof=loaded.proof, provenance=prov, as_of=as_of)

    @handle_errors
    def ListAuthorities(self, request: ds.ListAuthoritiesRequest, context: grpc.ServicerContext) -> ds.ListAuthoritiesResponse:
        d, as_of = self._at(request)
        items, token, provs = d.list_records("authority", request.parent, request.page_size, request.page_token, request.filter, current())
        return ds.ListAuthoritiesResponse(
            authorities=[_typed(records_pb2.Authority, i.record) for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs,
            as_of=as_of,
        )

    @handle_errors
    def SearchAuthorities(self, request: ds.SearchAuthoritiesRequest, context: grpc.ServicerContext) -> ds.SearchAuthoritiesResponse:
        d, as_of = self._at(request)
        items, token, provs = d.search(request.query, request.member, request.page_size, request.page_token, current())
        return ds.SearchAuthoritiesResponse(
            authorities=[_typed(records_pb2.Authority, i.record) for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs,
            as_of=as_of,
        )

    @handle_errors
    def GetContact(self, request: ds.GetContactRequest, context: grpc.ServicerContext) -> ds.GetContactResponse:
        d, as_of = self._at(request)
        loaded, prov = d.get(request.name, "contacts", current())
        return ds.GetContactResponse(contact=_typed(records_pb2.Contact, loaded.record), proof=loaded.proof, provenance=prov, as_of=as_of)

    @handle_errors
    def ListContacts(self, request: ds.ListContactsRequest, context: grpc.ServicerContext) -> ds.ListContactsResponse:
        d, as_of = self._at(request)
        items, token, provs = d.list_records("contact", request.parent, request.page_size, request.page_token, request.filter, current())
        return ds.ListContactsResponse(
            contacts=[_typed(records_pb2.Contact, i.record) for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs,
            as_of=as_of,
        )

    @handle_errors
    def GetRule(self, request: ds.GetRuleRequest, context: grpc.ServicerContext) -> ds.GetRuleResponse:
        d, as_of = self._at(request)
        loaded, prov = d.get(request.name, "rules", current())
        return ds.GetRuleResponse(rule=_typed(records_pb2.Rule, loaded.record), proof=loaded.proof, provenance=prov, as_of=as_of)

    @handle_errors
    def ListRules(self, request: ds.ListRulesRequest, context: grpc.ServicerContext) -> ds.ListRulesResponse:
        d, as_of = self._at(request)
        items, token, provs = d.list_records("rule", request.parent, request.page_size, request.page_token, request.filter, current())
        return ds.ListRulesResponse(
            rules=[_typed(records_pb2.Rule, i.record) for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs,
            as_of=as_of,
        )

    @handle_errors
    def GetTreaty(self, request: ds.GetTreatyRequest, context: grpc.ServicerContext) -> ds.GetTreatyResponse:
        d, as_of = self._at(request)
        loaded, prov = d.get(request.name, "treaties", current())
        return ds.GetTreatyResponse(treaty=_typed(records_pb2.Treaty, loaded.record), proof=loaded.proof, provenance=prov, as_of=as_of)

    @handle_errors
    def ListTreaties(self, request: ds.ListTreatiesRequest, context: grpc.ServicerContext) -> ds.ListTreatiesResponse:
        d, as_of = self._at(request)
        items, token, provs = d.list_records("treaty", request.parent, request.page_size, request.page_token, request.filter, current())
        return ds.ListTreatiesResponse(
            treaties=[_typed(records_pb2.Treaty, i.record) for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs,
            as_of=as_of,
        )

    @handle_errors
    def GetPlace(self, request: ds.GetPlaceRequest, context: grpc.ServicerContext) -> ds.GetPlaceResponse:
        d, as_of = self._at(request)
        loaded, prov = d.get(request.name, "places", current())
        return ds.GetPlaceResponse(place=_typed(records_pb2.Place, loaded.record), proof=loaded.proof, provenance=prov, as_of=as_of)

    @handle_errors
    def ListPlaces(self, request: ds.ListPlacesRequest, context: grpc.ServicerContext) -> ds.ListPlacesResponse:
        d, as_of = self._at(request)
        items, token, provs = d.list_records("place", request.parent, request.page_size, request.page_token, request.filter, current())
        return ds.ListPlacesResponse(
            places=[_typed(records_pb2.Place, i.record) for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs,
            as_of=as_of,
        )

    @handle_errors
    def GetMember(self, request: ds.GetMemberRequest, context: grpc.ServicerContext) -> ds.GetMemberResponse:
        return ds.GetMemberResponse(member=self.d.member_info(parse_member_name(request.name), current()))

    @handle_errors
    def ListMembers(self, request: ds.ListMembersRequest, context: grpc.ServicerContext) -> ds.ListMembersResponse:
        members, token = self.d.members(request.page_size, request.page_token, current())
        f = self.d.federation()
        return ds.ListMembersResponse(
            members=members, next_page_token=token, federation_version=f.version,
            federation_id=f.document.federation_id,
        )

    @handle_errors
    def ListRecordRevisions(
        self, request: ds.ListRecordRevisionsRequest, context: grpc.ServicerContext
    ) -> ds.ListRecordRevisionsResponse:
        revisions, token, prov = self.d.revisions(request.name, request.page_size, request.page_token, current())
        return ds.ListRecordRevisionsResponse(revisions=revisions, next_page_token=token, provenance=prov)

    @handle_errors
    def FindCounterpart(  # type: ignore[override]  # bytes too: see add_to_server
        self, request: ds.FindCounterpartRequest, context: grpc.ServicerContext
    ) -> ds.FindCounterpartResponse | bytes:
        answer = self.views.find_counterpart_bytes(self.d, request, current())
        return answer if self.raw_answers else ds.FindCounterpartResponse.FromString(answer)


def _as_is(answer: ds.FindCounterpartResponse | bytes) -> bytes:
    return answer if isinstance(answer, bytes) else answer.SerializeToString()


def add_to_server(servicer: DirectoryServicer, server: grpc.Server) -> None:
    """``add_DirectoryServiceServicer_to_server``, but FindCounterpart's answer, kept
    serialized (``lookup.Directory.find_counterpart_bytes``), is sent without being parsed
    and serialized again."""
    service = ds.DESCRIPTOR.services_by_name["DirectoryService"]
    handlers: dict[str, Any] = {}
    for method in service.methods:
        request: Any = getattr(ds, method.input_type.name)
        response: Any = getattr(ds, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_deserializer=request.FromString,
            response_serializer=_as_is if method.name == "FindCounterpart" else response.SerializeToString,
        )
    servicer.raw_answers = True
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
