"""The review page: one self-contained HTML document (inline CSS and script, no outside assets).

The document is a shell; its script asks the page's server for the job's cards and the
decisions (``GET api/state``, again every ``POLL_MS`` with the last ETag, so a decision made
by another reviewer on another machine shows up without a reload) and draws them. Every
change is a ``POST`` carrying the page's CSRF token in ``X-CSRF-Token``; the server judges
it (``pipeline.review_server``). Texts from the job (prompts, reasons, names) are put in as
text nodes, never as HTML.

Keyboard: ``j``/``k`` (or arrows) move between runs, ``a`` approves, ``r`` rejects (asks the
reason), ``g`` regenerates, ``x`` selects; ``A``, ``R`` and ``G`` act on the selection;
``1``-``5`` choose the filter (all, waiting, checks failed, approved, rejected); ``?`` help.
"""

from __future__ import annotations

import html
import json

from .pages import CSS as REPORT_CSS

POLL_MS = 2000

CSS = REPORT_CSS + """
.bar{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:.6rem 2rem;
display:flex;gap:.5rem;align-items:center;flex-wrap:wrap}
.bar button,.card button{font:inherit;border:1px solid var(--line);background:#fff;border-radius:7px;
padding:.3rem .7rem;cursor:pointer}
.bar button.on{background:var(--ink);color:#fff;border-color:var(--ink)}
.bar .count{color:var(--muted);font-size:.78rem;margin-left:.2rem}
.bar .gap{flex:1}
.card{outline:none}
.card.focus{box-shadow:0 0 0 3px var(--accent)}
.card.selected{background:#fff8ec}
.card.approved{border-color:#9bd3ad}.card.rejected,.card.regenerate{border-color:#f1b8b0}
.card .prompt{font-size:.78rem;color:var(--ink);max-height:4.4em;overflow:hidden}
.checks{display:flex;flex-wrap:wrap;gap:.3rem}
.check{font-size:.7rem;padding:.05rem .45rem;border-radius:999px;background:#dcf3e3;color:var(--ok)}
.check.fail{background:#fde4e1;color:var(--bad)}
.decision{font-size:.78rem}
.decision b{text-transform:uppercase;letter-spacing:.04em;font-size:.7rem}
.decision.approved b{color:var(--ok)}.decision.rejected b,.decision.regenerate b{color:var(--bad)}
.actions{display:flex;gap:.35rem;align-items:center;flex-wrap:wrap}
.actions label{margin-right:auto;font-size:.78rem;color:var(--muted)}
.card button{padding:.2rem .45rem;font-size:.78rem}
.card button.approve{border-color:#9bd3ad}.card button.reject{border-color:#f1b8b0}
#notice{min-height:1.2em;font-size:.82rem}
#notice.bad{color:var(--bad)}
#help{display:none;font-size:.8rem;color:var(--muted);padding:.3rem 2rem}
#help.on{display:block}
kbd{border:1px solid var(--line);border-bottom-width:2px;border-radius:4px;padding:0 .3rem;background:#fff}
"""

SCRIPT = r"""
(function(){
'use strict';
var cfg=JSON.parse(document.getElementById('cfg').textContent);
var csrf=document.querySelector('meta[name="csrf-token"]').content;
var cards=[],decisions={},etag=null,filter='all',focus=0,selected={},busy=false;
var sheet=document.getElementById('sheet'),notice=document.getElementById('notice');
var FILTERS=['all','waiting','checks-failed','approved','rejected'];
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;
 if(text!==undefined&&text!==null)e.textContent=String(text);return e;}
function media(key){return 'media/'+key.split('/').map(encodeURIComponent).join('/');}
function stateOf(c){var d=decisions[c.run_key];return d?d.state:'waiting';}
function failed(c){for(var k in c.checks){if(!c.checks[k].passed)return true;}return false;}
function shown(c){
 if(filter==='all')return true;
 if(filter==='checks-failed')return failed(c);
 if(filter==='waiting')return !!c.output&&stateOf(c)==='waiting';
 var st=stateOf(c);return filter==='rejected'?(st==='rejected'||st==='regenerate'):st===filter;}
function say(text,bad){notice.textContent=text||'';notice.className=bad?'bad':'';}
function card(c){
 var st=stateOf(c),a=el('article','run card '+c.status+(st!=='waiting'?' '+st:'')+(selected[c.run_key]?' selected':''));
 a.id='run-'+c.n;a.tabIndex=-1;a.dataset.runKey=c.run_key;a.dataset.state=st;
 var pair=el('div','pair'),ins=el('div','ins');
 c.inputs.forEach(function(i){
  if(i.src){var im=el('img');im.src=media(i.src);im.alt=i.name;im.title=i.name;ins.appendChild(im);}
  else{ins.appendChild(el('span','pic',i.name));}});
 if(c.more_inputs)ins.appendChild(el('span','more','+'+c.more_inputs+' more'));
 pair.appendChild(ins);pair.appendChild(el('span','arrow','\u2192'));
 if(c.output){var o=el('a','out');o.href=media(c.output);o.target='_blank';var im=el('img');
  im.src=media(c.thumb||c.output);im.alt=c.output;im.title=c.output;o.appendChild(im);pair.appendChild(o);}
 else{var n=el('div','out none');n.appendChild(el('b',null,c.status));n.appendChild(document.createTextNode(c.error||'no output yet'));pair.appendChild(n);}
 a.appendChild(pair);
 var cap=el('div','cap');cap.appendChild(el('span','what',c.image_set+' \u00b7 '+c.prompt+' \u00b7 v'+c.variant));
 cap.appendChild(el('span','n','#'+c.n));a.appendChild(cap);
 var opts=[];for(var k in c.options)opts.push(k.replace(/_/g,' ')+' '+c.options[k]);
 if(c.cost_usd)opts.push('$'+c.cost_usd);
 if(c.regenerated_from)opts.push('regenerated for '+c.regenerated_from.slice(0,10));
 if(c.regenerated_as)opts.push('regenerated as '+c.regenerated_as.slice(0,10));
 a.appendChild(el('div','opts',opts.join(' \u00b7 ')));
 if(c.prompt_sent){var p=el('div','prompt',c.prompt_sent);p.title=c.prompt_sent;a.appendChild(p);}
 var names=Object.keys(c.checks);
 if(names.length){var ch=el('div','checks');names.forEach(function(k){var r=c.checks[k];
  var b=el('span','check'+(r.passed?'':' fail'),(r.passed?'\u2713 ':'\u2717 ')+k);b.title=r.detail;ch.appendChild(b);});a.appendChild(ch);}
 var d=decisions[c.run_key];
 if(d){var dv=el('div','decision '+d.state);dv.appendChild(el('b',null,d.state));
  dv.appendChild(document.createTextNode(' by '+d.reviewer+' '+(d.at||'').replace('T',' ').slice(0,19)+(d.reason?' \u2014 '+d.reason:'')));a.appendChild(dv);}
 if(c.output){var act=el('div','actions'),lab=el('label'),box=el('input');box.type='checkbox';box.checked=!!selected[c.run_key];
  box.addEventListener('change',function(){toggle(c.run_key);});lab.appendChild(box);lab.appendChild(document.createTextNode(' select'));act.appendChild(lab);
  [['approve','Approve'],['reject','Reject'],['regenerate','Regenerate']].forEach(function(b){
   var btn=el('button',b[0],b[1]);btn.type='button';btn.addEventListener('click',function(){act_on(b[0],[c.run_key]);});act.appendChild(btn);});
  a.appendChild(act);}
 a.addEventListener('click',function(e){if(e.target.tagName!=='BUTTON'&&e.target.tagName!=='INPUT'){focus=visible().indexOf(c);mark();}});
 return a;}
function visible(){return cards.filter(shown);}
function draw(){
 var keep=visible()[focus],list=visible();sheet.textContent='';
 list.forEach(function(c){sheet.appendChild(card(c));});
 if(keep){var i=list.indexOf(keep);focus=i<0?Math.min(focus,list.length-1):i;}
 counts();mark(true);}
function counts(){var n={all:0,waiting:0,'checks-failed':0,approved:0,rejected:0};
 cards.forEach(function(c){FILTERS.forEach(function(f){var o=filter;filter=f;if(shown(c))n[f]++;filter=o;});});
 FILTERS.forEach(function(f){var b=document.getElementById('f-'+f);b.className=f===filter?'on':'';
  b.querySelector('.count').textContent=n[f];});
 document.getElementById('selcount').textContent=Object.keys(selected).length;
 document.body.dataset.runs=cards.length;document.body.dataset.decisions=Object.keys(decisions).length;}
function mark(quiet){var nodes=sheet.children;for(var i=0;i<nodes.length;i++)nodes[i].classList.toggle('focus',i===focus);
 if(nodes[focus]&&!quiet){nodes[focus].scrollIntoView({block:'nearest'});nodes[focus].focus({preventScroll:true});}}
function toggle(key){if(selected[key])delete selected[key];else selected[key]=true;draw();}
function chosen(){var keys=Object.keys(selected);return keys.length?keys:[];}
function apply(st){decisions=st.decisions;cards=st.runs;var live={};cards.forEach(function(c){live[c.run_key]=1;});
 for(var k in selected)if(!live[k])delete selected[k];
 document.getElementById('jobstatus').textContent=st.job.status+' \u00b7 $'+(st.job.spent_usd||'0')+' spent'+
  (st.job.budget_usd?' of $'+st.job.budget_usd:'');draw();}
function load(){
 var h={'Accept':'application/json'};if(etag)h['If-None-Match']=etag;
 return fetch('api/state',{headers:h,cache:'no-store'}).then(function(r){
  if(r.status===304)return;if(!r.ok)throw new Error('the server answered '+r.status);
  etag=r.headers.get('ETag');return r.json().then(apply);}).catch(function(e){say('could not refresh: '+e.message,true);});}
function post(path,body){
 return fetch(path,{method:'POST',headers:{'Content-Type':'application/json','X-CSRF-Token':csrf},body:JSON.stringify(body)})
  .then(function(r){return r.json().then(function(j){if(!r.ok)throw new Error(j.error||('the server answered '+r.status));return j;});});}
function act_on(what,keys){
 if(!keys.length){say('nothing selected (x selects the run in focus)',true);return;}
 if(busy)return;var reason='';
 if(what!=='approve'){reason=window.prompt((what==='reject'?'Reject ':'Reject and regenerate ')+keys.length+' run(s): the reason','');
  if(reason===null)return;reason=reason.trim();if(!reason){say('a rejection needs a reason',true);return;}}
 busy=true;say(what+'\u2026');
 var req=what==='regenerate'?post('api/regenerate',{run_keys:keys,reason:reason}):
  post('api/decisions',{run_keys:keys,decision:what,reason:reason});
 req.then(function(j){say(j.message||'done');selected={};etag=null;return load();})
  .catch(function(e){say(e.message,true);}).then(function(){busy=false;});}
FILTERS.forEach(function(f){document.getElementById('f-'+f).addEventListener('click',function(){filter=f;focus=0;draw();});});
[['sel-approve','approve'],['sel-reject','reject'],['sel-regenerate','regenerate']].forEach(function(b){
 document.getElementById(b[0]).addEventListener('click',function(){act_on(b[1],chosen());});});
document.addEventListener('keydown',function(e){
 if(e.ctrlKey||e.metaKey||e.altKey||/INPUT|TEXTAREA/.test(e.target.tagName))return;
 var list=visible(),c=list[focus],k=e.key;
 if(k==='j'||k==='ArrowDown'||k==='ArrowRight'){focus=Math.min(list.length-1,focus+1);mark();}
 else if(k==='k'||k==='ArrowUp'||k==='ArrowLeft'){focus=Math.max(0,focus-1);mark();}
 else if(k==='x'&&c){toggle(c.run_key);}
 else if(k==='a'&&c){act_on('approve',[c.run_key]);}
 else if(k==='r'&&c){act_on('reject',[c.run_key]);}
 else if(k==='g'&&c){act_on('regenerate',[c.run_key]);}
 else if(k==='A'){act_on('approve',chosen());}
 else if(k==='R'){act_on('reject',chosen());}
 else if(k==='G'){act_on('regenerate',chosen());}
 else if(k>='1'&&k<='5'){filter=FILTERS[+k-1];focus=0;draw();}
 else if(k==='?'){document.getElementById('help').classList.toggle('on');}
 else return;e.preventDefault();});
load();setInterval(load,cfg.poll_ms);
})();
"""


def render_review_page(job_id: str, name: str, csrf_token: str, reviewer: str) -> str:
    """The page's HTML for job ``job_id``; ``csrf_token`` goes with every change it posts."""
    cfg = json.dumps({"poll_ms": POLL_MS})
    filters = "".join(
        f'<button type="button" id="f-{key}">{label} <span class="count">0</span></button>'
        for key, label in (("all", "All"), ("waiting", "Waiting"), ("checks-failed", "Checks failed"),
                           ("approved", "Approved"), ("rejected", "Rejected"))
    )
    e = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="csrf-token" content="{e(csrf_token)}">
<title>Review · {e(name)} · {e(job_id)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>Review · {e(name)}</h1>
<p class="sub">Job <code>{e(job_id)}</code> · <span id="jobstatus">loading…</span> · reviewing as
 <b>{e(reviewer)}</b></p></header>
<div class="bar">{filters}<span class="gap"></span>
<span class="count"><span id="selcount">0</span> selected</span>
<button type="button" id="sel-approve">Approve selected</button>
<button type="button" id="sel-reject">Reject selected</button>
<button type="button" id="sel-regenerate">Regenerate selected</button></div>
<p id="help"><kbd>j</kbd>/<kbd>k</kbd> next/previous · <kbd>a</kbd> approve · <kbd>r</kbd> reject ·
<kbd>g</kbd> regenerate · <kbd>x</kbd> select · <kbd>A</kbd>/<kbd>R</kbd>/<kbd>G</kbd> the selection ·
<kbd>1</kbd>–<kbd>5</kbd> filters · <kbd>?</kbd> this help</p>
<main><p id="notice"></p><div class="sheet" id="sheet"></div></main>
<footer>editpipe review · decisions go to <code>jobs/{e(job_id)}/review.jsonl</code>; press <kbd>?</kbd>
for the keys.</footer>
<script type="application/json" id="cfg">{cfg}</script>
<script>{SCRIPT}</script>
</body></html>
"""
