"""counterpart.v1.DirectoryService: decodes requests, calls lookup.Directory, encodes answers."""

from __future__ import annotations

import grpc

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from directory_server.domain.names import parse_member_name
from directory_server.lookup import Directory
from directory_server.service.errors import handle_errors


class DirectoryServicer(ds_grpc.DirectoryServiceServicer):
    def __init__(self, directory: Directory) -> None:
        self.d = directory

    @handle_errors
    def GetAuthority(self, request: ds.GetAuthorityRequest, context: grpc.ServicerContext) -> ds.GetAuthorityResponse:
        loaded, prov = self.d.get(request.name, "authorities")
        return ds.GetAuthorityResponse(authority=loaded.record, proof=loaded.proof, provenance=prov)

    @handle_errors
    def ListAuthorities(self, request: ds.ListAuthoritiesRequest, context: grpc.ServicerContext) -> ds.ListAuthoritiesResponse:
        items, token, provs = self.d.list("authority", request.parent, request.page_size, request.page_token, request.filter)
        return ds.ListAuthoritiesResponse(
            authorities=[i.record for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs
        )

    @handle_errors
    def SearchAuthorities(self, request: ds.SearchAuthoritiesRequest, context: grpc.ServicerContext) -> ds.SearchAuthoritiesResponse:
        items, token, provs = self.d.search(request.query, request.member, request.page_size, request.page_token)
        return ds.SearchAuthoritiesResponse(
            authorities=[i.record for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs
        )

    @handle_errors
    def GetContact(self, request: ds.GetContactRequest, context: grpc.ServicerContext) -> ds.GetContactResponse:
        loaded, prov = self.d.get(request.name, "contacts")
        return ds.GetContactResponse(contact=loaded.record, proof=loaded.proof, provenance=prov)

    @handle_errors
    def ListContacts(self, request: ds.ListContactsRequest, context: grpc.ServicerContext) -> ds.ListContactsResponse:
        items, token, provs = self.d.list("contact", request.parent, request.page_size, request.page_token, request.filter)
        return ds.ListContactsResponse(
            contacts=[i.record for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs
        )

    @handle_errors
    def GetRule(self, request: ds.GetRuleRequest, context: grpc.ServicerContext) -> ds.GetRuleResponse:
        loaded, prov = self.d.get(request.name, "rules")
        return ds.GetRuleResponse(rule=loaded.record, proof=loaded.proof, provenance=prov)

    @handle_errors
    def ListRules(self, request: ds.ListRulesRequest, context: grpc.ServicerContext) -> ds.ListRulesResponse:
        items, token, provs = self.d.list("rule", request.parent, request.page_size, request.page_token, request.filter)
        return ds.ListRulesResponse(
            rules=[i.record for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs
        )

    @handle_errors
    def GetTreaty(self, request: ds.GetTreatyRequest, context: grpc.ServicerContext) -> ds.GetTreatyResponse:
        loaded, prov = self.d.get(request.name, "treaties")
        return ds.GetTreatyResponse(treaty=loaded.record, proof=loaded.proof, provenance=prov)

    @handle_errors
    def ListTreaties(self, request: ds.ListTreatiesRequest, context: grpc.ServicerContext) -> ds.ListTreatiesResponse:
        items, token, provs = self.d.list("treaty", request.parent, request.page_size, request.page_token, request.filter)
        return ds.ListTreatiesResponse(
            treaties=[i.record for i in items], next_page_token=token, proofs=[i.proof for i in items], provenances=provs
        )

    @handle_errors
    def GetMember(self, request: ds.GetMemberRequest, context: grpc.ServicerContext) -> ds.GetMemberResponse:
        return ds.GetMemberResponse(member=self.d.member_info(parse_member_name(request.name)))

    @handle_errors
    def ListMembers(self, request: ds.ListMembersRequest, context: grpc.ServicerContext) -> ds.ListMembersResponse:
        members, token = self.d.members(request.page_size, request.page_token)
        f = self.d.federation()
        return ds.ListMembersResponse(
            members=members, next_page_token=token, federation_version=f.version,
            federation_id=f.document.federation_id,
        )

    @handle_errors
    def FindCounterpart(self, request: ds.FindCounterpartRequest, context: grpc.ServicerContext) -> ds.FindCounterpartResponse:
        return self.d.find_counterpart(request)
